"""Lay out the KServe model storage for deploy/overlays/kserve/inferenceservice.yaml:

    OUT/config/config.properties          <- config/kserve/config.properties
    OUT/config/metrics.yaml               <- config/metrics.yaml (metrics_config)
    OUT/model-store/efficientnet_lite0.mar  <- packaged with config/kserve/model-config.yaml
    OUT/model-store/efficientnet_lite0.mar.sig  <- its signature, where it was signed (package --sign-key)

    python -m scripts.packaging.kserve_storage build/kserve     # then copy OUT to the storageUri
    python -m scripts.packaging.kserve_storage build/kserve --mar path/to/efficientnet_lite0.mar
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from scripts import repo
from scripts.ops import signature
from scripts.packaging import package
from scripts.packaging.plan import PackagingInputs

KSERVE_CONFIG = repo.CONFIG_DIR / "kserve"


def stage(out: Path, mar: Path) -> Path:
    """Copy the variant's config.properties, the metrics declarations and the archive (with its
    signature, where one lies beside it) into KServe's layout under `out`."""
    (out / "config").mkdir(parents=True, exist_ok=True)
    (out / "model-store").mkdir(parents=True, exist_ok=True)
    shutil.copy2(KSERVE_CONFIG / "config.properties", out / "config" / "config.properties")
    shutil.copy2(repo.CONFIG_DIR / "metrics.yaml", out / "config" / "metrics.yaml")
    shutil.copy2(mar, out / "model-store" / mar.name)
    if signature.signature_path(mar).is_file():
        shutil.copy2(signature.signature_path(mar), out / "model-store")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--mar", type=Path, help="an archive packaged with config/kserve/model-config.yaml")
    args = parser.parse_args(argv)
    if args.mar:
        stage(args.out, args.mar)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            mar = package.package(PackagingInputs(model_config=KSERVE_CONFIG / "model-config.yaml",
                                                  export_dir=Path(tmp)))
            stage(args.out, mar)
    print(f"KServe storage laid out in {args.out}: copy it to the InferenceService's storageUri")
    return 0


if __name__ == "__main__":
    sys.exit(main())
