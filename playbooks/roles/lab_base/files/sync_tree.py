"""Make a folder hold exactly the files of a bundle read from stdin, changing only what differs.

stdin: {"dest": FOLDER, "files": {RELATIVE_PATH: TEXT}}. Files not in the bundle whose names match the
bundle's suffixes (e.g. a module deleted on the controller) are removed. Prints {"changed": [...],
"removed": [...]}: the role reports a change only when one of those lists is not empty.
"""

import json
import sys
from pathlib import Path

spec = json.load(sys.stdin)
root = Path(spec["dest"])
files = spec["files"]
changed, removed = [], []
for rel, text in sorted(files.items()):
    path = root / rel
    data = text.encode()
    try:
        same = path.read_bytes() == data and (path.stat().st_mode & 0o777) == 0o644
    except OSError:
        same = False
    if same:
        continue
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.incoming")
    staging.write_bytes(data)
    staging.chmod(0o644)
    staging.replace(path)
    changed.append(rel)
suffixes = {Path(rel).suffix for rel in files}
for path in sorted(root.rglob("*")):
    rel = path.relative_to(root).as_posix()
    if path.is_file() and path.suffix in suffixes and "__pycache__" not in path.parts and rel not in files:
        path.unlink()
        removed.append(rel)
print(json.dumps({"changed": changed, "removed": removed}))
