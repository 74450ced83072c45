"""The site script of the federated job: runs inside each hospital's NVFlare client, next to its data.

NVFlare copies this file into the job and runs it at every site (`python site_client.py --app kidney ...`).
It reads where the site's studies are from the site's own environment (see `site_config`), trains on the
eligible entries of the site's federated queue and answers every round with weights, the Dice of the model
it received on its held-out labels and its number of training images. A record of each round stays at the
site, in `<studies>/.annotation-server/fl_rounds.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROUNDS_LOG = "fl_rounds.jsonl"


def _options(argv: list[str] | None = None):  # type: ignore[no-untyped-def]
    from annotation_server.federated.site_training import LocalTraining

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--app", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--local-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--val-split", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return LocalTraining(
        app=args.app,
        model=args.model,
        local_steps=args.local_steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        val_split=args.val_split,
        seed=args.seed,
    )


def _log_round(studies: Path, record: dict) -> None:
    """The site's own record of what it trained and sent (never sent itself)."""
    from annotation_server.datastore.local import STATE_DIRNAME

    path = studies / STATE_DIRNAME / ROUNDS_LOG
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> None:
    import nvflare.client as flare

    from annotation_server.federated.site_config import load_site_settings
    from annotation_server.federated.site_training import SiteTrainer, check_weights_only, outgoing_update

    options = _options(argv)
    flare.init()
    site = flare.get_site_name()
    settings = load_site_settings(site)
    trainer = SiteTrainer(options, settings)
    while flare.is_running():
        received = flare.receive()
        if received is None:
            break
        round_index = received.current_round or 0
        started = time.monotonic()
        result = trainer.run_round(received.params, round_index)
        update = outgoing_update(result)
        check_weights_only(update, trainer.reference)
        flare.send(flare.FLModel(**update))
        _log_round(
            settings.studies,
            {
                "job_id": flare.get_job_id(),
                "site": site,
                "round": round_index,
                "num_samples": result.num_samples,
                "num_validation": trainer.num_validation,
                "dice": round(result.dice, 5),
                "steps": result.steps,
                "eval_s": round(result.eval_s, 2),
                "train_s": round(result.train_s, 2),
                "round_s": round(time.monotonic() - started, 2),
                "ts": time.time(),
            },
        )


if __name__ == "__main__":
    main()
