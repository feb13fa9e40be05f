"""Whether two ``--save`` folders hold the same model, tensor for tensor: every ``*.safetensors`` file under either
folder (the weights and the patches in ``lightning_edit_patches/``) compared with ``torch.equal``; prints JSON.

    python bench/compare_saved_models.py runs/save-uninterrupted runs/save-resumed

What a resumed sequential run is checked with (docs/results/lifelong.md): the run interrupted half-way and resumed
must end with exactly the weights and patch tensors of the run that was not interrupted. Exit status 0 when every
tensor is equal, 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import emit  # noqa: E402


def tensor_files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*.safetensors"))}


def compare(first: Path, second: Path) -> dict:
    """Per tensor file: how many tensors, how many differ (names of up to 5), files only in one folder."""
    a, b = tensor_files(first), tensor_files(second)
    files = {}
    for name in sorted(set(a) & set(b)):
        ta, tb = load_file(str(a[name])), load_file(str(b[name]))
        differ = sorted(k for k in set(ta) | set(tb)
                        if k not in ta or k not in tb or ta[k].dtype != tb[k].dtype or not torch.equal(ta[k], tb[k]))
        files[name] = {"tensors": len(set(ta) | set(tb)), "differ": len(differ), "first_differing": differ[:5],
                       "elements": sum(t.numel() for t in ta.values())}
    only = sorted(set(a) ^ set(b))
    identical = not only and all(f["differ"] == 0 for f in files.values()) and bool(files)
    return {"first": str(first), "second": str(second), "identical": identical, "files": files,
            "only_in_one": only}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    for folder in (args.first, args.second):
        if not folder.is_dir():
            raise SystemExit(f"{folder} is not a folder; give two --save folders")
    result = compare(args.first, args.second)
    emit(result, args.output)
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
