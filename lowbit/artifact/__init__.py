"""The serving artifact: a directory with manifest.json (versions, device fingerprint, sha256 of every file),
model.yaml, packed weights (safetensors), tuning records, compiled kernels and a compile report. See README.md."""

from lowbit.artifact.fingerprint import fingerprint
from lowbit.artifact.inspect import describe
from lowbit.artifact.manifest import FORMAT_VERSION, ArtifactError, FileEntry, Manifest, ManifestError
from lowbit.artifact.reader import Artifact, ArtifactWarning, VerifyReport, open_artifact, verify_artifact
from lowbit.artifact.tensorfile import TensorFile, TensorFileError
from lowbit.artifact.writer import ArtifactWriter

__all__ = [
    "FORMAT_VERSION",
    "Artifact",
    "ArtifactError",
    "ArtifactWarning",
    "ArtifactWriter",
    "FileEntry",
    "Manifest",
    "ManifestError",
    "TensorFile",
    "TensorFileError",
    "VerifyReport",
    "describe",
    "fingerprint",
    "open_artifact",
    "verify_artifact",
]
