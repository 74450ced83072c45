"""Procedural abdominal CT phantoms with kidney / tumor / cyst labels (the training and test data source).

The real kidney CT available to the project is reserved for evaluation, so learned kidney models are trained
on these phantoms only. They are generated with wide domain randomisation (anatomy, contrast phase, grid,
orientation, noise, blur, lesions) and calibrated on real CT HU statistics; see `config.PhantomConfig`.

    from annotation_server.phantoms import PhantomConfig, generate_phantom, write_phantom_dataset
    phantom = generate_phantom(0)                        # default training distribution
    phantom = generate_phantom(0, PhantomConfig.easy())  # clean 3 mm RAS 128x128x64
    ids = write_phantom_dataset(Path("studies"), n=10, seed=0)
"""

from annotation_server.phantoms.config import OODKind, PhantomConfig, Phase
from annotation_server.phantoms.generator import LABELS, Phantom, generate_phantom, write_phantom_dataset
from annotation_server.phantoms.intensity import Tissue

__all__ = [
    "LABELS",
    "OODKind",
    "Phantom",
    "PhantomConfig",
    "Phase",
    "Tissue",
    "generate_phantom",
    "write_phantom_dataset",
]
