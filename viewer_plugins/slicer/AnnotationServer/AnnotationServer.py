"""AnnotationServer: annotate in 3D Slicer with annotation-server (interactive prompts, undo, locks, review).

Layers: the Widget (Qt) only reads inputs and shows results; the Logic runs the workflow through
`AnnotationServerLib` (REST, deltas, prompts, bookkeeping; no Qt, no MRML) and `AnnotationServerScene` (the
only code that touches the scene). Network calls run in a worker thread; the Widget polls them with a QTimer
and applies the answers on the GUI thread, so Slicer never freezes while the server works.
"""

from __future__ import annotations

import concurrent.futures
import os
import tempfile
import threading
import traceback
from pathlib import Path

import numpy as np
import qt
import slicer
import vtk
from AnnotationServerLib import AnnotationServerClient, ServerError, SessionBook, decode_delta
from AnnotationServerLib.prompts import box_prompt, lasso_from_ras, point_prompt, ras_to_ijk, scribble_prompt
from AnnotationServerScene import apply_delta, labelmap_array, load_labelmap, volume_geometry, write_seg_nrrd
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

IMAGE_ID_ATTRIBUTE = "AnnotationServer.ImageId"


class AnnotationServer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Annotation Server"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["annotation-server developers"]
        self.parent.helpText = (
            "Annotate with an annotation-server: point, box, lasso and scribble prompts whose answers update only "
            "the changed box of the segment, undo/redo, locked segments, Next Sample, auto-segmentation, model "
            "versions, training progress and federated queue review. See viewer_plugins/slicer/README.md."
        )
        self.parent.acknowledgementText = "Speaks the MONAI Label REST protocol plus annotation-server's own API."


# ------------------------------------------------------------------------------------------------------- logic
class AnnotationServerLogic(ScriptedLoadableModuleLogic):
    """The workflow, without Qt: safe to call from tests and from Slicer's Python console."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.client: AnnotationServerClient | None = None
        self.info: dict = {}
        self.book: SessionBook | None = None
        self.volume_node = None
        self.segmentation_node = None
        self.work_dir = Path(tempfile.mkdtemp(prefix="annotation-server-"))

    # -------------------------------------------------------------------------------------------- server
    def require_client(self) -> AnnotationServerClient:
        if self.client is None:
            raise ServerError("not connected: enter the server URL and press Connect")
        return self.client

    def connect(self, url: str, username: str = "", password: str = "") -> dict:
        client = AnnotationServerClient(url, client_id=username or os.environ.get("USER") or "slicer")
        if client.auth_required():
            if not username or not password:
                raise ServerError(f"{url} requires a login: enter your user name and password, then Connect")
            client.login(username, password)
        self.client = client
        self.info = client.info()
        return self.info

    def interactive_models(self) -> list[str]:
        return [name for name, m in self.info.get("models", {}).items() if m.get("type") == "deepgrow"]

    def segmentation_models(self) -> list[str]:
        return [name for name, m in self.info.get("models", {}).items() if m.get("type") == "segmentation"]

    def labels(self, model: str | None = None) -> dict[str, int]:
        """Label name -> value: the open session's, else the model's, else the app's in order."""
        if self.book is not None:
            return dict(self.book.labels)
        models = self.info.get("models", {})
        if model in models and models[model].get("labels"):
            return {k: int(v) for k, v in models[model]["labels"].items() if int(v) != 0}
        return {name: i + 1 for i, name in enumerate(self.info.get("labels", []))}

    # ------------------------------------------------------------------------------------------- studies
    def studies(self) -> list[str]:
        return sorted(self.require_client().studies().get("objects", {}))

    def next_sample(self, strategy: str) -> str | None:
        answer = self.require_client().next_sample(strategy)
        return answer.get("id") or None

    def download_image(self, image_id: str) -> Path:
        return self.require_client().download_image(image_id, self.work_dir / f"{image_id}.nii.gz")

    def load_image(self, image_id: str, path: Path):
        """GUI thread: the downloaded image as the current volume, remembered as the server's image."""
        node = slicer.util.loadVolume(str(path))
        node.SetName(image_id)
        node.SetAttribute(IMAGE_ID_ATTRIBUTE, image_id)
        self.set_volume(node)
        return node

    def set_volume(self, node) -> None:
        if node is not self.volume_node:
            self.book = None
        self.volume_node = node
        if node is not None and self.segmentation_node is None:
            seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{node.GetName()} annotation")
            seg.CreateDefaultDisplayNodes()
            self.segmentation_node = seg
        if node is not None:
            self.segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(node)

    def ensure_on_server(self) -> str:
        """The server's id of the current volume, uploading it when the server does not have it."""
        if self.volume_node is None:
            raise ServerError("no volume: load a study or pick a volume first")
        client = self.require_client()
        image_id = self.volume_node.GetAttribute(IMAGE_ID_ATTRIBUTE)
        if image_id and client.has_image(image_id):
            return image_id
        path = self.work_dir / f"{self.volume_node.GetName() or 'volume'}.nii.gz"
        if not slicer.util.saveNode(self.volume_node, str(path)):
            raise ServerError(f"could not write the volume to {path}: check free disk space")
        image_id = client.upload_image(path, image_id or None)
        self.volume_node.SetAttribute(IMAGE_ID_ATTRIBUTE, image_id)
        return image_id

    def read_label(self, path: Path) -> np.ndarray:
        """GUI thread: a label file on the volume's grid as an (i, j, k) array."""
        node = slicer.util.loadLabelVolume(str(path), {"show": False})
        try:
            return np.ascontiguousarray(slicer.util.arrayFromVolume(node).transpose(2, 1, 0)).astype(np.uint8)
        finally:
            slicer.mrmlScene.RemoveNode(node)

    def auto_segment(self, model: str) -> Path:
        """Worker thread: run a segmentation model on the current volume; returns the label file."""
        image_id = self.ensure_on_server()
        return self.require_client().infer(model, image_id, self.work_dir / f"{image_id}-{model}.nii.gz")

    def show_label(self, path: Path, labels: dict[str, int]) -> None:
        load_labelmap(self.segmentation_node, self.volume_node, self.read_label(path), labels, self.locked())

    # ------------------------------------------------------------------------------------------ sessions
    def open_session(self, model: str | None, label: str | None, from_saved: bool) -> dict:
        """Worker thread: open a session (from the saved final label when asked); returns its state."""
        image_id = self.ensure_on_server()
        state = self.require_client().open_session(
            image_id, model=model, label=label, from_label="final" if from_saved else None
        )
        self.book = SessionBook.from_state(state)
        if from_saved:
            state["mask_path"] = str(self.work_dir / f"{image_id}-session.nii.gz")
            Path(state["mask_path"]).write_bytes(self.require_client().session_mask(self.book.session_id))
        return state

    def session_opened(self, state: dict) -> None:
        """GUI thread: segments for the session's labels, filled from the saved label when it started from one."""
        shape, _ = volume_geometry(self.volume_node)
        if list(shape) != list(state["shape"]):
            raise ServerError(
                f"the volume's grid {list(shape)} is not the server image's {state['shape']}: load the study from "
                "the server (Load selected study) instead of a local copy"
            )
        mask = self.read_label(Path(state["mask_path"])) if state.get("mask_path") else np.zeros(shape, np.uint8)
        load_labelmap(self.segmentation_node, self.volume_node, mask, self.book.labels)

    def require_book(self) -> SessionBook:
        if self.book is None:
            raise ServerError("no session: press Start session first")
        return self.book

    def locked(self) -> set[str]:
        return set(self.book.locked) if self.book else set()

    def voxel(self, ras) -> tuple[int, int, int]:
        shape, ijk_to_ras = volume_geometry(self.volume_node)
        return ras_to_ijk(ijk_to_ras, ras, shape)

    def point(self, ras, positive: bool, label: str | None) -> dict:
        book = self.require_book()
        return point_prompt(self.voxel(ras), positive, label, book.locked)

    def box(self, ras_a, ras_b, label: str | None) -> dict:
        book = self.require_book()
        return box_prompt(self.voxel(ras_a), self.voxel(ras_b), label, book.locked)

    def lasso(self, points_ras, positive: bool, label: str | None) -> dict:
        book = self.require_book()
        shape, ijk_to_ras = volume_geometry(self.volume_node)
        return lasso_from_ras(ijk_to_ras, points_ras, shape, positive=positive, label=label, locked=book.locked)

    def scribble(self, points_ras, positive: bool, label: str | None) -> dict:
        book = self.require_book()
        voxels = np.array([self.voxel(p) for p in points_ras])
        return scribble_prompt(voxels, positive, label, book.locked)

    def send_prompt(self, prompt: dict, new_object: bool = False) -> dict:
        """Worker thread: the server's answer to a prompt."""
        return self.require_client().prompt(self.require_book().session_id, prompt, new_object)

    def send_history(self, action: str) -> dict:
        """Worker thread: undo, redo or reset."""
        client, book = self.require_client(), self.require_book()
        if action == "reset":
            return client.reset(book.session_id, book.locked)  # locked segments survive a reset, on the server too
        return {"undo": client.undo, "redo": client.redo}[action](book.session_id)

    def apply_answer(self, answer: dict, kind: str) -> list[str]:
        """GUI thread: write the answer's changed box into the segments.

        Locked segments are untouched by prompts and resets (the server keeps them too). Undo and redo replay
        the server's history exactly, locked or not, so Slicer and the server never disagree."""
        book = self.require_book()
        book.answered(answer, kind)
        delta = decode_delta(answer.get("delta"))
        locked = () if kind in ("undo", "redo") else book.locked
        return apply_delta(self.segmentation_node, self.volume_node, delta, book.labels, locked)

    def save(self, tag: str) -> dict:
        """Worker thread: save the session as a new label version, tagged with the effort record."""
        book = self.require_book()
        return self.require_client().save_session(book.session_id, tag or "final", book.save_info())

    def save_segmentation(self, tag: str) -> dict:
        """Save the segments as edited in Slicer (e.g. with Segment Editor tools) as a .seg.nrrd label."""
        labels = self.labels()
        path = write_seg_nrrd(self.segmentation_node, self.volume_node, labels, self.work_dir / "segmentation.seg.nrrd")
        info = self.book.save_info() if self.book else {}
        return self.require_client().put_label(self.ensure_on_server(), path, tag or "final", info)

    def current_labelmap(self) -> np.ndarray:
        return labelmap_array(self.segmentation_node, self.volume_node, self.labels())


# ------------------------------------------------------------------------------------------------------ widget
class AnnotationServerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: AnnotationServerLogic | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.pending: list[tuple[concurrent.futures.Future, object]] = []
        self.timer = qt.QTimer()
        self.timer.setInterval(50)
        self.timer.timeout.connect(self._poll)
        self.prompt_node = None
        self.mode = None
        self.new_object = False
        self.training_events: list = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/AnnotationServer.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.logic = AnnotationServerLogic()
        ui = self.ui
        ui.connectButton.clicked.connect(self.onConnect)
        ui.nextSampleButton.clicked.connect(self.onNextSample)
        ui.loadStudyButton.clicked.connect(self.onLoadStudy)
        ui.volumeSelector.currentNodeChanged.connect(self.onVolumeChanged)
        ui.segmentationSelector.currentNodeChanged.connect(self.onSegmentationChanged)
        ui.autoSegmentButton.clicked.connect(self.onAutoSegment)
        ui.startSessionButton.clicked.connect(self.onStartSession)
        for button, mode in (
            (ui.pointForegroundButton, "point+"),
            (ui.pointBackgroundButton, "point-"),
            (ui.boxButton, "box"),
            (ui.lassoButton, "lasso"),
            (ui.scribbleButton, "scribble"),
        ):
            button.toggled.connect(lambda on, m=mode: self.onMode(m, on))
        ui.newObjectButton.clicked.connect(self.onNewObject)
        ui.undoButton.clicked.connect(lambda: self.onHistory("undo"))
        ui.redoButton.clicked.connect(lambda: self.onHistory("redo"))
        ui.resetButton.clicked.connect(lambda: self.onHistory("reset"))
        ui.lockListWidget.itemChanged.connect(self.onLockChanged)
        ui.saveButton.clicked.connect(self.onSave)
        ui.refreshVersionsButton.clicked.connect(self.onRefreshVersions)
        ui.promoteButton.clicked.connect(lambda: self.onVersionChange("promote"))
        ui.rollbackButton.clicked.connect(lambda: self.onVersionChange("rollback"))
        ui.startTrainingButton.clicked.connect(self.onStartTraining)
        ui.stopTrainingButton.clicked.connect(self.onStopTraining)
        ui.refreshQueueButton.clicked.connect(self.onRefreshQueue)
        ui.approveButton.clicked.connect(lambda: self.onReview("approve"))
        ui.excludeButton.clicked.connect(lambda: self.onReview("exclude"))
        ui.effortButton.clicked.connect(self.onEffort)
        self.updateButtons()

    def cleanup(self) -> None:
        self.timer.stop()
        self.removeObservers()
        self.executor.shutdown(wait=False)

    # --------------------------------------------------------------------------------------- plumbing
    def run(self, work, done=None, busy: str = "working...") -> None:
        """`work` in the worker thread, then `done(result)` on the GUI thread; failures become a message."""
        self.ui.statusLabel.text = busy
        self.pending.append((self.executor.submit(work), done))
        self.timer.start()

    def _poll(self) -> None:
        for item in list(self.pending):
            future, done = item
            if not future.done():
                continue
            self.pending.remove(item)
            try:
                result = future.result()
                if done is not None:
                    done(result)
                self.ui.statusLabel.text = "ready"
            except Exception as exc:
                self.fail(exc)
        if not self.pending:
            self.timer.stop()
        self.updateButtons()

    def fail(self, exc: Exception) -> None:
        message = str(exc) if isinstance(exc, ServerError | ValueError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, ServerError | ValueError):
            traceback.print_exc()
        self.ui.statusLabel.text = message
        slicer.util.errorDisplay(message, windowTitle="Annotation Server")

    def guarded(self, action) -> None:
        try:
            action()
        except Exception as exc:
            self.fail(exc)

    def updateButtons(self) -> None:
        logic, ui = self.logic, self.ui
        connected = logic.client is not None
        has_volume = logic.volume_node is not None
        book = logic.book
        for button in (ui.nextSampleButton, ui.loadStudyButton, ui.refreshVersionsButton, ui.refreshQueueButton):
            button.enabled = connected
        ui.autoSegmentButton.enabled = connected and has_volume
        ui.startSessionButton.enabled = connected and has_volume
        for button in (
            ui.pointForegroundButton,
            ui.pointBackgroundButton,
            ui.boxButton,
            ui.lassoButton,
            ui.scribbleButton,
            ui.newObjectButton,
            ui.resetButton,
            ui.saveButton,
        ):
            button.enabled = book is not None
        ui.undoButton.enabled = bool(book and book.can_undo)
        ui.redoButton.enabled = bool(book and book.can_redo)
        if book is not None:
            ui.effortLabel.text = f"{book.effort.seconds:.0f} s, {book.effort.interactions} interactions"

    # ------------------------------------------------------------------------------------ connection
    def onConnect(self) -> None:
        ui = self.ui
        url, user, password = ui.serverUrlLineEdit.text.strip(), ui.usernameLineEdit.text, ui.passwordLineEdit.text
        self.run(lambda: self.logic.connect(url, user, password), self.onConnected, f"connecting to {url}...")

    def onConnected(self, info: dict) -> None:
        ui, logic = self.ui, self.logic
        serving = info.get("server", {}).get("serving_versions", {})
        models = [f"{name} v{serving.get(name, m.get('version') or '-')}" for name, m in info.get("models", {}).items()]
        user = f" as {logic.client.username}" if logic.client.username else ""
        ui.appLabel.text = f"{info.get('name', '')}{user}; models: {', '.join(models) or 'none'}"
        ui.modelComboBox.clear()
        ui.modelComboBox.addItems(logic.interactive_models())
        ui.labelComboBox.clear()
        ui.labelComboBox.addItems(list(info.get("labels", [])))
        ui.strategyComboBox.clear()
        ui.strategyComboBox.addItems(list(info.get("strategies", {})))
        self.fillLocks(logic.labels())
        self.run(logic.studies, self.onStudies, "listing studies...")

    def onStudies(self, ids: list[str]) -> None:
        self.ui.studiesListWidget.clear()
        self.ui.studiesListWidget.addItems(ids)

    def fillLocks(self, labels: dict[str, int]) -> None:
        widget = self.ui.lockListWidget
        widget.clear()
        for name in labels:
            item = qt.QListWidgetItem(name)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Unchecked)
            widget.addItem(item)

    # --------------------------------------------------------------------------------------- studies
    def onNextSample(self) -> None:
        strategy = self.ui.strategyComboBox.currentText or "random"
        self.run(lambda: self.logic.next_sample(strategy), self.onSampleChosen, f"asking {strategy} for a study...")

    def onSampleChosen(self, image_id: str | None) -> None:
        if not image_id:
            slicer.util.infoDisplay("Every study is labeled (or reserved by someone else): nothing left to do.")
            return
        self.loadStudy(image_id)

    def onLoadStudy(self) -> None:
        item = self.ui.studiesListWidget.currentItem()
        if item is None:
            self.fail(ValueError("select a study in the list first"))
            return
        self.loadStudy(item.text())

    def loadStudy(self, image_id: str) -> None:
        def done(path: Path) -> None:
            node = self.logic.load_image(image_id, path)
            self.ui.volumeSelector.setCurrentNode(node)
            self.ui.segmentationSelector.setCurrentNode(self.logic.segmentation_node)

        self.run(lambda: self.logic.download_image(image_id), done, f"downloading {image_id}...")

    def onVolumeChanged(self, node) -> None:
        self.guarded(lambda: self.logic.set_volume(node))
        self.updateButtons()

    def onSegmentationChanged(self, node) -> None:
        if node is not None:
            self.logic.segmentation_node = node
            if self.logic.volume_node is not None:
                node.SetReferenceImageGeometryParameterFromVolumeNode(self.logic.volume_node)

    def onAutoSegment(self) -> None:
        models = self.logic.segmentation_models()
        if not models:
            self.fail(ServerError("this server's app has no segmentation model: use an interactive session"))
            return
        model = models[0]
        labels = self.logic.labels(model)
        self.run(lambda: self.logic.auto_segment(model), lambda p: self.logic.show_label(p, labels), "segmenting...")

    # --------------------------------------------------------------------------------------- session
    def onStartSession(self) -> None:
        model = self.ui.modelComboBox.currentText or None
        label = self.ui.labelComboBox.currentText or None
        from_saved = bool(self.ui.fromSavedCheckBox.checked)

        def done(state: dict) -> None:
            self.logic.session_opened(state)
            self.fillLocks(self.logic.book.labels)

        self.run(lambda: self.logic.open_session(model, label, from_saved), done, "opening a session...")

    def onMode(self, mode: str, on: bool) -> None:
        """Each tool is a markups node in persistent place mode: the tool stays active click after click."""
        if not on:
            if self.mode == mode:
                if mode in ("lasso", "scribble") and self.prompt_node.GetNumberOfControlPoints() > 0:
                    self.sendPrompt(self.prompt_node)  # pressing the tool again ends the stroke and sends it
                self.stopPlacing()
            return
        buttons = {
            "point+": self.ui.pointForegroundButton,
            "point-": self.ui.pointBackgroundButton,
            "box": self.ui.boxButton,
            "lasso": self.ui.lassoButton,
            "scribble": self.ui.scribbleButton,
        }
        for other, button in buttons.items():
            if other != mode and button.checked:
                button.checked = False
        self.stopPlacing()
        kind = {"box": "vtkMRMLMarkupsROINode", "lasso": "vtkMRMLMarkupsClosedCurveNode"}.get(
            mode, "vtkMRMLMarkupsCurveNode" if mode == "scribble" else "vtkMRMLMarkupsFiducialNode"
        )
        node = slicer.mrmlScene.AddNewNodeByClass(kind, f"AnnotationServer {mode}")
        node.SetAttribute("AnnotationServer.Prompt", mode)
        self.prompt_node, self.mode = node, mode
        event = node.PointPositionDefinedEvent
        self.addObserver(node, event, self.onPromptPlaced)
        if mode == "box":
            self.addObserver(node, node.PointEndInteractionEvent, self.onPromptPlaced)
        slicer.modules.markups.logic().SetActiveList(node)
        slicer.modules.markups.logic().StartPlaceMode(True)  # persistent: the tool stays on, click after click
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetCurrentInteractionMode(interaction.Place)

    def stopPlacing(self) -> None:
        if self.prompt_node is not None:
            self.removeObservers(self.onPromptPlaced)
            slicer.mrmlScene.RemoveNode(self.prompt_node)
        self.prompt_node, self.mode = None, None

    def onPromptPlaced(self, node, event) -> None:
        """A point or a finished box is sent at once; lasso and scribble points collect until the tool's button
        is pressed again (see `onMode`), which sends the closed lasso or the stroke."""
        if self.mode not in ("point+", "point-", "box"):
            return
        if self.mode == "box" and event == node.PointPositionDefinedEvent and node.GetNumberOfControlPoints() < 1:
            return
        self.sendPrompt(node)

    def sendPrompt(self, node) -> None:
        label = self.ui.labelComboBox.currentText or None
        erase = bool(self.ui.eraseCheckBox.checked)
        n = node.GetNumberOfControlPoints()
        positions = []
        for index in range(n):
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(index, position)
            positions.append(position)
        try:
            if self.mode in ("point+", "point-"):
                prompt = self.logic.point(positions[-1], self.mode == "point+", label)
            elif self.mode == "box":
                bounds = [0.0] * 6
                node.GetRASBounds(bounds)
                prompt = self.logic.box(bounds[0::2], bounds[1::2], label)
            elif self.mode == "lasso":
                prompt = self.logic.lasso(positions, not erase, label)
            else:
                curve = vtk.vtkPoints()
                if n > 1:
                    node.GetCurvePointsWorld(curve)
                samples = [curve.GetPoint(i) for i in range(curve.GetNumberOfPoints())] or positions
                prompt = self.logic.scribble(samples, not erase, label)
        except Exception as exc:
            self.fail(exc)
            return
        finally:
            if self.mode != "box":
                node.RemoveAllControlPoints()
        new_object, self.new_object = self.new_object, False
        kind = prompt["type"]
        self.run(lambda: self.logic.send_prompt(prompt, new_object), lambda a: self.logic.apply_answer(a, kind), "...")

    def onNewObject(self) -> None:
        """The next prompt starts a new object (a second lesion); the tool stays as it is."""
        self.new_object = True

    def onHistory(self, action: str) -> None:
        self.run(lambda: self.logic.send_history(action), lambda a: self.logic.apply_answer(a, action), action)

    def onLockChanged(self, item) -> None:
        book = self.logic.book
        if book is not None:
            self.guarded(lambda: book.lock(item.text(), item.checkState() == qt.Qt.Checked))

    def onSave(self) -> None:
        tag = self.ui.saveTagLineEdit.text.strip() or "final"
        self.run(
            lambda: self.logic.save(tag),
            lambda saved: slicer.util.infoDisplay(f"Saved {saved['image']} as '{saved['tag']}' v{saved['version']}"),
            "saving...",
        )

    # --------------------------------------------------------------------------- versions, training
    def currentModel(self) -> str:
        models = self.logic.segmentation_models() + self.logic.interactive_models()
        return self.ui.modelComboBox.currentText or (models[0] if models else "")

    def onRefreshVersions(self) -> None:
        model = self.currentModel()
        self.run(lambda: self.logic.require_client().model_versions(model), self.showVersions, "listing versions...")

    def showVersions(self, answer: dict) -> None:
        table = self.ui.versionsTableWidget
        versions = answer.get("versions", [])
        table.setColumnCount(3)
        table.setHorizontalHeaderLabels(["version", "serving", "created"])
        table.setRowCount(len(versions))
        for row, version in enumerate(versions):
            number = version.get("version")
            serving = "yes" if number == answer.get("serving") else ""
            for column, value in enumerate((number, serving, version.get("created", ""))):
                table.setItem(row, column, qt.QTableWidgetItem(str(value)))

    def onVersionChange(self, action: str) -> None:
        model, version = self.currentModel(), int(self.ui.versionSpinBox.value)
        client = self.logic.require_client

        def work():
            return client().promote(model, version) if action == "promote" else client().rollback(model)

        self.run(work, lambda _: self.onRefreshVersions(), f"{action}...")

    def onStartTraining(self) -> None:
        model = (self.logic.info.get("trainers") or {}) and next(iter(self.logic.info["trainers"]))
        if not model:
            self.fail(ServerError("this server's app has no trainable model"))
            return
        self.run(lambda: self.logic.require_client().start_training(model), self.followTraining, "starting...")

    def followTraining(self, job: dict) -> None:
        """Read the SSE stream in a background thread; a QTimer shows each event as it arrives."""
        events = self.training_events = []
        client = self.logic.require_client()

        def read() -> None:
            for event in client.training_events(job.get("id")):
                events.append(event)

        threading.Thread(target=read, daemon=True).start()  # not the request worker: prompts keep flowing
        qt.QTimer.singleShot(200, self.showTraining)

    def showTraining(self) -> None:
        events = self.training_events
        if not events:
            qt.QTimer.singleShot(500, self.showTraining)
            return
        name, data = events[-1]
        if name == "progress" and data.get("total_steps"):
            self.ui.trainingProgressBar.value = int(100 * data["step"] / data["total_steps"])
            dice = data.get("val_dice")
            self.ui.trainingLabel.text = (
                f"epoch {data.get('epoch')}/{data.get('total_epochs')}, loss {data.get('loss')}, "
                f"validation Dice {dice if dice is not None else '-'}, about {data.get('eta_s', 0):.0f} s left"
            )
        elif name == "end":
            self.ui.trainingProgressBar.value = (
                100 if data.get("status") == "DONE" else self.ui.trainingProgressBar.value
            )
            self.ui.trainingLabel.text = f"training {data.get('status', 'ended')}: {data.get('result') or ''}"[:300]
        if name != "end":
            qt.QTimer.singleShot(500, self.showTraining)

    def onStopTraining(self) -> None:
        self.run(lambda: self.logic.require_client().stop_training(), None, "stopping training...")

    # ----------------------------------------------------------------------------------------- review
    def onRefreshQueue(self) -> None:
        self.run(lambda: self.logic.require_client().queue(), self.showQueue, "listing the queue...")

    def showQueue(self, page: dict) -> None:
        table = self.ui.queueTableWidget
        entries = page.get("entries", [])
        columns = ["id", "image_id", "annotator", "status", "model_version"]
        table.setColumnCount(len(columns))
        table.setHorizontalHeaderLabels(columns)
        table.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            for column, key in enumerate(columns):
                table.setItem(row, column, qt.QTableWidgetItem(str(entry.get(key, ""))))

    def onReview(self, action: str) -> None:
        row = self.ui.queueTableWidget.currentRow()
        if row < 0:
            self.fail(ValueError("select a queue entry first"))
            return
        entry_id = int(self.ui.queueTableWidget.item(row, 0).text())
        reason = self.ui.excludeReasonLineEdit.text
        client = self.logic.require_client

        def work():
            return client().approve(entry_id) if action == "approve" else client().exclude(entry_id, reason)

        self.run(work, lambda _: self.onRefreshQueue(), f"{action}...")

    def onEffort(self) -> None:
        def show(report: dict) -> None:
            self.ui.effortReportLabel.text = str(report.get("summary", report))[:600]

        self.run(lambda: self.logic.require_client().effort(), show, "effort report...")


# -------------------------------------------------------------------------------------------------------- test
class AnnotationServerTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test, or `Slicer --no-main-window --python-code "..."`).

    The offline part needs nothing but Slicer; the live part runs when ANNOTATION_SERVER_URL names a server
    with the sample CT (e.g. `annotate-server start --app kidney` on 127.0.0.1:8000).
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_delta_lands_in_the_box_and_spares_locked_segments()
        url = os.environ.get("ANNOTATION_SERVER_URL")
        if url:
            self.setUp()
            self.test_live_session(url)

    def _volume(self):
        array_kji = np.zeros((20, 30, 40), dtype=np.int16)
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "test volume")
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.diag([-0.8, -0.8, 2.0, 1.0])))
        slicer.util.updateVolumeFromArray(node, array_kji)
        return node

    def test_delta_lands_in_the_box_and_spares_locked_segments(self) -> None:
        self.delayDisplay("delta apply")
        logic = AnnotationServerLogic()
        logic.set_volume(self._volume())
        labels = {"kidney": 1, "tumor": 2}
        shape, _ = volume_geometry(logic.volume_node)
        start = np.zeros(shape, np.uint8)
        start[2:5, 2:5, 2:5] = 2
        load_labelmap(logic.segmentation_node, logic.volume_node, start, labels)
        values = np.ones((6, 6, 6), np.uint8)
        from AnnotationServerLib.delta import Delta

        apply_delta(logic.segmentation_node, logic.volume_node, Delta((1, 1, 1), values), labels, {"tumor"})
        result = labelmap_array(logic.segmentation_node, logic.volume_node, labels)
        expected = start.copy()
        expected[1:7, 1:7, 1:7] = np.where(start[1:7, 1:7, 1:7] == 2, 2, 1)
        self.assertTrue(np.array_equal(result, expected))
        self.delayDisplay("delta apply passed")

    def test_live_session(self, url: str) -> None:
        self.delayDisplay(f"live session on {url}")
        logic = AnnotationServerLogic()
        logic.connect(
            url, os.environ.get("ANNOTATION_SERVER_USER", ""), os.environ.get("ANNOTATION_SERVER_PASSWORD", "")
        )
        image_id = logic.studies()[0]
        logic.load_image(image_id, logic.download_image(image_id))
        state = logic.open_session(logic.interactive_models()[0], None, False)
        logic.session_opened(state)
        shape, ijk_to_ras = volume_geometry(logic.volume_node)
        center = (ijk_to_ras @ np.array([shape[0] // 2, shape[1] // 2, shape[2] // 2, 1.0]))[:3]
        logic.apply_answer(logic.send_prompt(logic.point(center, True, None)), "point")
        path = logic.work_dir / "server-mask.nii.gz"
        path.write_bytes(logic.require_client().session_mask(logic.book.session_id))
        self.assertTrue(np.array_equal(logic.current_labelmap(), logic.read_label(path)))
        self.delayDisplay("live session passed")
