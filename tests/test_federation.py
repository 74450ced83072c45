"""Federation with NVFlare: the job folder, what a site sends, importing the global model, a simulated run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from annotation_models import bundle_path
from annotation_server.app_spec import load_app
from annotation_server.errors import InvalidRequestError, NotFoundError
from annotation_server.federated import nvflare_support
from annotation_server.federated.cli import fl_app
from annotation_server.federated.global_model import import_global_model
from annotation_server.federated.nvflare_support import FederationFailedError, FederationUnavailableError
from annotation_server.federated.simulation import SimulatedSite, check_run, prepare_site, prepare_sites
from annotation_server.federated.site import open_site_queue
from annotation_server.federated.site_config import SITE_CONFIG_ENV, STUDIES_ENV, load_site_settings
from annotation_server.federated.site_training import (
    NUM_SAMPLES_KEY,
    RoundResult,
    check_weights_only,
    held_out_split,
    outgoing_update,
)
from annotation_server.learning.finetune import load_network
from annotation_server.registry import ModelRegistry

SEG = bundle_path("kidney_seg")
MODEL = "kidney_seg"
runner = CliRunner()


@pytest.fixture(scope="module")
def app() -> Any:
    return load_app("kidney")


@pytest.fixture(scope="module")
def shipped_state() -> dict[str, torch.Tensor]:
    return load_network(SEG).state_dict()


@pytest.fixture(scope="module")
def site(app: Any, tmp_path_factory: pytest.TempPathFactory) -> SimulatedSite:
    """One small phantom hospital: 3 studies whose final labels went through the datastore into the queue."""
    return prepare_site(app, MODEL, "site-1", tmp_path_factory.mktemp("site"), 0, 3, seed=7, small=True)


# ------------------------------------------------------------------------------------------ what a site sends
def _result(state: dict[str, torch.Tensor]) -> RoundResult:
    return RoundResult(state_dict=state, dice=0.8, num_samples=5, steps=2, train_s=1.0, eval_s=0.1)


def test_a_site_update_holds_weights_dice_and_a_count_only(shipped_state: dict[str, torch.Tensor]) -> None:
    reference = {k: tuple(v.shape) for k, v in shipped_state.items()}
    update = outgoing_update(_result(shipped_state))
    check_weights_only(update, reference)
    assert set(update) == {"params", "metrics", "meta"}
    assert update["meta"] == {NUM_SAMPLES_KEY: 5} and update["metrics"] == {"dice": 0.8}
    assert set(update["params"]) == set(reference)

    image = np.zeros((80, 64, 64), dtype=np.float32)
    for bad in (
        {**update, "meta": {**update["meta"], "image": "/data/kidney-ct/case_0001.nii.gz"}},
        {**update, "metrics": {"dice": "case_0001"}},
        {**update, "metrics": {"dice": float("nan")}},
        {**update, "params": {**update["params"], "label": torch.from_numpy(image)}},
        {**update, "params": {**update["params"], "model.0.conv.unit0.conv.bias": torch.from_numpy(image)}},
        {**update, "image_ids": ["case_0001"]},
    ):
        with pytest.raises(InvalidRequestError, match="outgoing update"):
            check_weights_only(bad, reference)


@pytest.mark.slow
def test_the_audit_filter_records_shapes_and_refuses_strings() -> None:
    pytest.importorskip("nvflare")
    from annotation_server.federated.audit import summarize

    weights = {"w": np.ones((2, 3), dtype=np.float32)}
    meta = {NUM_SAMPLES_KEY: 3, "initial_metrics": {"dice": 0.5}, "filter_history": ["ExcludeVars"]}
    summary, problems = summarize("WEIGHT_DIFF", weights, meta)
    assert problems == [] and summary["params"] == {"w": [[2, 3], "float32"]} and summary["meta"] == meta
    leaky = {"path": "/data/x.nii.gz", "filter_history": ["/data/case_1"]}
    summary, problems = summarize("WEIGHTS", {**weights, "id": np.array(["case_1"])}, leaky)
    assert len(problems) == 3 and "/data" not in json.dumps(summary)
    summary, problems = summarize("WEIGHTS", weights, {"initial_metrics": {"dice": 0.5, "case_0001": 0.9}})
    assert problems == ["meta 'initial_metrics' is a dict, not a number"] and "case_0001" not in json.dumps(summary)


# --------------------------------------------------------------------------------------------- site settings
def test_a_site_reads_its_studies_from_its_own_environment(tmp_path: Path) -> None:
    studies = tmp_path / "studies"
    studies.mkdir()
    assert load_site_settings("a", {STUDIES_ENV: str(studies)}).studies == studies
    shared = tmp_path / "sites.json"
    shared.write_text(json.dumps({"sites": {"a": {"studies": str(studies), "threads": 1}}}))
    assert load_site_settings("a", {SITE_CONFIG_ENV: str(shared)}).threads == 1
    with pytest.raises(InvalidRequestError, match="no entry for site 'b'"):
        load_site_settings("b", {SITE_CONFIG_ENV: str(shared)})
    with pytest.raises(InvalidRequestError, match=STUDIES_ENV):
        load_site_settings("a", {})
    with pytest.raises(InvalidRequestError, match="does not exist"):
        load_site_settings("a", {STUDIES_ENV: str(tmp_path / "missing")})


def test_without_nvflare_federation_says_how_to_install_it(
    app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nvflare_support, "nvflare_available", lambda: False)
    with pytest.raises(FederationUnavailableError, match=r"annotation-server\[fl\]"):
        nvflare_support.require_nvflare()
    result = runner.invoke(fl_app, ["job", "--app", "kidney", "--out", str(tmp_path / "job")])
    assert result.exit_code == 2 and "annotation-server[fl]" in result.output


# ---------------------------------------------------------------------------------------------- the job folder
def _configs(job: Path) -> dict[str, Any]:
    return {str(p.relative_to(job)): json.loads(p.read_text()) for p in job.rglob("*.json")}


def test_export_writes_a_standard_job_folder_without_site_paths(
    app: Any, tmp_path: Path, shipped_state: dict[str, torch.Tensor]
) -> None:
    pytest.importorskip("nvflare")
    from annotation_server.federated.nvflare_job import export_job

    job = export_job(
        app,
        tmp_path / "out",
        rounds=3,
        sites=["hospital-a", "hospital-b"],
        local_steps=7,
        exclude_vars=("model.2.conv.bias",),
        percentile_privacy=25.0,
    )
    configs = _configs(job)
    meta = configs["meta.json"]
    assert meta["min_clients"] == 2
    assert meta["deploy_map"] == {
        "app_server": ["server"],
        "app_hospital-a": ["hospital-a"],
        "app_hospital-b": ["hospital-b"],
    }
    server = configs["app_server/config/config_fed_server.json"]
    assert server["workflows"][0]["args"]["num_rounds"] == 3
    persistor = next(c for c in server["components"] if c["id"] == "persistor")["args"]
    assert persistor["model"]["path"] == "fl_network.BundleNetwork"
    assert (
        persistor["model"]["args"]["network_def"]
        == json.loads((SEG / "configs" / "inference.json").read_text())["network_def"]
    )
    assert persistor["source_ckpt_file_full_name"] == "initial_model.pt"
    initial = torch.load(job / "app_server" / "custom" / "initial_model.pt", weights_only=True)["model"]
    assert all(torch.equal(initial[k], v) for k, v in shipped_state.items())
    # The coordinator's server builds the model from the copied module alone, with the job's JSON arguments.
    import importlib.util

    spec = importlib.util.spec_from_file_location("fl_network_copy", job / "app_server" / "custom" / "fl_network.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    network = module.BundleNetwork(**persistor["model"]["args"])
    network.load_state_dict(initial)
    assert set(network.state_dict()) == set(shipped_state)

    client = configs["app_hospital-a/config/config_fed_client.json"]
    executor = client["executors"][0]["executor"]["args"]
    assert executor["task_script_path"] == "site_client.py"
    assert "--local-steps 7" in executor["task_script_args"] and "--app kidney" in executor["task_script_args"]
    assert executor["params_transfer_type"] == "DIFF"  # percentile privacy works on weight differences only
    filters = [f["path"].rsplit(".", 1)[-1] for f in client["task_result_filters"][0]["filters"]]
    assert filters == ["ExcludeVars", "PercentilePrivacy", "OutgoingUpdateAudit"]  # the audit sees the final result
    exclude, percentile = client["task_result_filters"][0]["filters"][:2]
    assert exclude["args"]["exclude_vars"] == ["model.2.conv.bias"]
    assert percentile["args"]["percentile"] == 25.0 and percentile["args"]["data_kinds"] == ["WEIGHT_DIFF"]
    assert (job / "app_hospital-a" / "custom" / "site_client.py").is_file()
    assert not list(job.rglob("annotation_server"))  # sites import the installed package, never a partial copy
    text = "\n".join(p.read_text() for p in job.rglob("*.json"))
    assert str(tmp_path) not in text and not re.search(r'"/(?:tmp|data|home|work)/', text)


def test_export_without_privacy_or_sites_is_one_app_for_any_site(app: Any, tmp_path: Path) -> None:
    pytest.importorskip("nvflare")
    result = runner.invoke(fl_app, ["job", "--app", "kidney", "--rounds", "2", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    job = Path(result.stdout.strip().splitlines()[-1])
    configs = _configs(job)
    assert configs["meta.json"]["deploy_map"] == {"app": ["@ALL"]} and configs["meta.json"]["min_clients"] == 2
    client = configs["app/config/config_fed_client.json"]
    assert client["executors"][0]["executor"]["args"].get("params_transfer_type", "FULL") == "FULL"
    filters = [f["path"].rsplit(".", 1)[-1] for chain in client["task_result_filters"] for f in chain["filters"]]
    assert filters == ["OutgoingUpdateAudit"]


# ----------------------------------------------------------------------------------------- importing a result
def _job_result(root: Path, state: dict[str, torch.Tensor], layout: str = "simulator") -> Path:
    """What NVFlare leaves after a 2-round job: the global model, the job meta and the server's metrics."""
    if layout == "simulator":
        job_dir = root / "server" / "simulate_job"
        app_server = job_dir / "app_server"
    else:  # `nvflare job download <id> -o root`
        job_dir = root / "7f3a9c"
        app_server = job_dir / "workspace" / "app_server"
    app_server.mkdir(parents=True)
    torch.save({"model": state, "train_conf": {"train": {"model": "BundleNetwork"}}}, app_server / "FL_global_model.pt")
    (job_dir / "meta.json").write_text(json.dumps({"name": "kidney_seg_fedavg", "job_id": "7f3a9c"}))
    metrics = app_server.parent / "metrics"
    metrics.mkdir()
    dice = [{"name": "dice", "value": 0.81}]
    (metrics / "metrics_summary.json").write_text(
        json.dumps({"final_round": 1, "final_aggregated_metrics": dice, "round_metrics_file": "round_metrics.jsonl"})
    )
    sites = [{"name": "site-1", "metrics": dice, "weight": 2.0}, {"name": "site-2", "metrics": dice, "weight": 5.0}]
    rounds = [{"round": r, "aggregated_metrics": dice, "sites": sites} for r in (0, 1)]
    (metrics / "round_metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rounds))
    return root


@pytest.mark.slow
def test_import_registers_a_federated_version_that_passes_the_gate(
    app: Any, site: SimulatedSite, tmp_path: Path, shipped_state: dict[str, torch.Tensor]
) -> None:
    source = _job_result(tmp_path / "ws", shipped_state)
    # The same weights score the same: an equal Dice on one held-out image is never a reason to promote.
    refused = import_global_model(source, app, ModelRegistry(tmp_path / "strict"), studies=site.studies)
    assert refused.gate is not None and not refused.gate.passed and not refused.promoted
    assert refused.version.status == "candidate" and "only 1 validation image(s)" in refused.gate.reason
    # A site that accepts a tie on one image (its own choice) gets the version served.
    registry = ModelRegistry(tmp_path / "registry")
    outcome = import_global_model(source, app, registry, studies=site.studies, min_val_images=1, min_improvement=-0.001)
    version = outcome.version
    assert (version.version, version.source, version.status, outcome.promoted) == (2, "federated", "serving", True)
    assert outcome.gate is not None and outcome.gate.passed and outcome.val_images == 1
    assert outcome.gate.mean_difference == 0.0 and "promotable" in outcome.gate.reason
    # Same weights, same images. The score is class-aware (mean of kidney-union, tumor and cyst Dice), so a
    # model that finds the kidneys but few of the phantoms' masses scores well below its union Dice.
    assert version.metrics["val_dice"] == version.metrics["serving_val_dice"] > 0.3
    provenance = version.provenance
    assert provenance["job_name"] == "kidney_seg_fedavg" and provenance["job_id"] == "7f3a9c"
    assert provenance["rounds"] == 2 and provenance["sample_counts"] == {"site-1": 2, "site-2": 5}
    assert provenance["base_version"] == 1 and provenance["global_metrics"] == [{"name": "dice", "value": 0.81}]
    _, val_items = held_out_split(site.studies, 0.2)
    assert [v["image"] for v in provenance["validation_labels"]] == [i.image_id for i in val_items]


@pytest.mark.slow
def test_import_keeps_a_worse_global_model_as_a_candidate(
    app: Any, site: SimulatedSite, tmp_path: Path, shipped_state: dict[str, torch.Tensor]
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    broken = {k: torch.zeros_like(v) for k, v in shipped_state.items()}
    result = runner.invoke(
        fl_app,
        [
            "import",
            "--job-dir",
            str(_job_result(tmp_path / "dl", broken, layout="download")),
            "--app",
            "kidney",
            "--studies",
            str(site.studies),
            "--data-dir",
            str(tmp_path / "data"),
        ],
    )
    assert result.exit_code == 0, result.output
    registry = ModelRegistry(tmp_path / "data" / "registry" / "kidney")
    version = registry.get(MODEL, 2)
    assert version.status == "candidate" and registry.serving_number(MODEL) == 1
    assert version.metrics["val_dice"] < version.metrics["serving_val_dice"]
    assert [e.action for e in registry.events(MODEL)][-1] == "reject"
    # Without the site's studies the gate cannot run: registered, never served.
    outcome = import_global_model(_job_result(tmp_path / "ws2", broken), app, registry)
    assert outcome.gate is None and outcome.version.status == "candidate" and not outcome.promoted


def test_a_missing_or_broken_job_result_is_a_clear_error(
    app: Any, tmp_path: Path, shipped_state: dict[str, torch.Tensor]
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    with pytest.raises(NotFoundError, match="no job result"):
        import_global_model(tmp_path / "nowhere", app, registry)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match=r"FL_global_model\.pt.*failed or not finished"):
        import_global_model(tmp_path / "empty", app, registry)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidRequestError, match="not a readable PyTorch checkpoint"):
        import_global_model(garbage, app, registry)
    other = tmp_path / "other.pt"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(InvalidRequestError, match="does not fit kidney_seg"):
        import_global_model(other, app, registry)
    encrypted = tmp_path / "he.pt"
    torch.save({"model": {k: b"ciphertext" for k in shipped_state}}, encrypted)
    with pytest.raises(InvalidRequestError, match="encrypted"):
        import_global_model(encrypted, app, registry)
    assert [v.version for v in registry.versions(MODEL)] == [1]  # nothing half-imported
    result = runner.invoke(fl_app, ["import", "--job-dir", str(tmp_path / "empty"), "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 2 and "FL_global_model.pt" in result.output


def test_a_run_without_a_global_model_or_its_last_round_is_a_failure(tmp_path: Path) -> None:
    with pytest.raises(FederationFailedError, match="no global model"):
        check_run(tmp_path, rounds=2)
    metrics = tmp_path / "server" / "simulate_job" / "metrics"
    metrics.mkdir(parents=True)
    (metrics / "metrics_summary.json").write_text(json.dumps({"final_round": 0}))
    (tmp_path / "server" / "simulate_job" / "app_server").mkdir()
    (tmp_path / "server" / "simulate_job" / "app_server" / "FL_global_model.pt").write_bytes(b"x")
    with pytest.raises(FederationFailedError, match="last completed round is 0, expected 1"):
        check_run(tmp_path, rounds=2)
    assert check_run(tmp_path, rounds=1)["final_round"] == 0


# ------------------------------------------------------------------------------------------- simulated runs
@pytest.mark.slow
def test_simulation_fails_loudly_when_a_site_has_no_eligible_labels(app: Any, tmp_path: Path) -> None:
    pytest.importorskip("nvflare")
    from annotation_server.federated.nvflare_job import job_options
    from annotation_server.federated.simulation import run_simulation

    sites = prepare_sites(app, MODEL, tmp_path, count=2, images=2, small=True)
    datastore, queue = open_site_queue(sites[1].studies)
    for entry in queue.eligible():
        queue.exclude(entry.id, "tumor boundary wrong")
    queue.close()
    datastore.close()
    options = job_options(app, MODEL, rounds=1, sites=[s.name for s in sites], local_steps=1)
    with pytest.raises(FederationFailedError) as failure:
        run_simulation(options, SEG, sites, tmp_path, threads=1)
    message = str(failure.value)
    assert "no global model" in message and "0 eligible labels" in message and "site-2" in message


@pytest.mark.slow
def test_two_sites_federate_from_their_queues_and_both_registries_get_the_global_model(
    app: Any, tmp_path: Path, shipped_state: dict[str, torch.Tensor]
) -> None:
    """Queue -> NVFlare simulator -> a federated version at each site, and only weights and counts left them."""
    pytest.importorskip("nvflare")
    workdir = tmp_path / "sim"
    args = ["simulate", "--app", "kidney", "--sites", "2", "--rounds", "2", "--images", "3", "--local-steps", "2"]
    result = runner.invoke(fl_app, [*args, "--small", "--threads", "1", "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["sites"] == ["site-1", "site-2"]
    assert [r["round"] for r in summary["round_metrics"]] == [0, 1]

    # The global model trained: it differs from the shipped starting weights it was initialised with.
    global_state = torch.load(summary["global_model"], weights_only=True)["model"]
    assert set(global_state) == set(shipped_state)
    assert any(not torch.allclose(torch.as_tensor(global_state[k]), v) for k, v in shipped_state.items())

    reference = {k: [list(v.shape), "float32"] for k, v in shipped_state.items()}
    for name in ("site-1", "site-2"):
        report = summary["per_site"][name]
        assert report["train_images"] == 2 and report["val_images"] == 1
        assert [r["round"] for r in report["rounds"]] == [0, 1] and report["dice_before"] is not None
        registry = ModelRegistry(Path(report["registry"]))
        version = registry.get(MODEL, report["new_version"])
        assert version.source == "federated" and version.version == 2
        assert version.provenance["sites"] == ["site-1", "site-2"]
        assert version.provenance["sample_counts"] == {"site-1": 2, "site-2": 2}
        assert version.status == ("serving" if report["promoted"] else "candidate")

        # What left the site, as its last output filter saw it: the network's weights and numbers, nothing else.
        sent = [
            json.loads(line)
            for p in (Path(summary["workspace"]) / name).rglob("outgoing_updates.jsonl")
            for line in p.read_text().splitlines()
        ]
        assert [s["round"] for s in sent] == [0, 1]
        studies = workdir / "sites" / name / "studies"
        image_ids = [p.name.split(".")[0] for p in studies.glob("*.nii.gz")]
        for update in sent:
            assert update["problems"] == [] and update["data_kind"] == "WEIGHTS"
            assert update["params"] == reference
            assert set(update["meta"]) <= {NUM_SAMPLES_KEY, "initial_metrics"}
            assert update["meta"][NUM_SAMPLES_KEY] == 2
            text = json.dumps(update)
            assert not any(i in text for i in image_ids) and str(studies) not in text and "annotator" not in text
