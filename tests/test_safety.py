"""Nothing a user may load is unpickled: the package never imports pickle-style loaders."""

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "picorag"
MODULES = "c?pickle|dill|cloudpickle|joblib|shelve|marshal|jsonpickle"
UNSAFE = re.compile(rf"^\s*(import ({MODULES})\b|from ({MODULES}) import)|pickle\.loads?\(|allow_pickle\s*=\s*True"
                    r"|torch\.load\((?![^)]*weights_only\s*=\s*True)|yaml\.(unsafe_)?load\((?![^)]*SafeLoader)", re.M)


def test_no_pickle_anywhere_in_the_package():
    offenders = [f"{p.relative_to(PACKAGE)}:{s.count(chr(10), 0, m.start()) + 1}: {m.group().strip()}"
                 for p in sorted(PACKAGE.rglob("*.py")) for s in [p.read_text(encoding="utf-8")]
                 for m in UNSAFE.finditer(s)]
    assert offenders == []


def test_the_scanner_catches_what_it_should():
    for bad in ["import pickle", "from joblib import load", "x = pickle.load(f)", "np.load(p, allow_pickle=True)",
                "torch.load(path)", "torch.load(path, weights_only=False)", "import marshal", "yaml.load(f)",
                "yaml.unsafe_load(f)"]:
        assert UNSAFE.search(bad), bad
    for fine in ["torch.load(path, weights_only=True)", "np.load(p, mmap_mode='r')", "# unpickled",
                 "yaml.load(f, Loader=yaml.SafeLoader)", "model.eval()"]:
        assert not UNSAFE.search(fine), fine
