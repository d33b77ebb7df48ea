#!/usr/bin/python
"""lab.hosts.files: a role's folders and small files (units, configs) in one module run.

The builtin copy and template actions cost two module runs per unchanged file, and a folder loop one run
per folder; a role writing a dozen of them spends seconds on a run that changes nothing. This module takes
them all at once and changes only what differs (content, owner, group, mode), in check mode and with --diff
too. Contents are rendered on the controller (the `template` lookup), so templates stay templates.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: files
short_description: Folders and small files of a role, written in one module run
description:
  - Creates the folders, then writes the files whose content, owner, group or mode differ (atomically, with
    their owner, group and mode set before the new content takes the file's name).
  - Reports changed only when something changed; the list of changed paths is returned.
options:
  folders:
    description: Folders to create (with their missing parents).
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: The folder's absolute path., type: path, required: true}
      owner: {description: Its owner (unchanged when left out)., type: str}
      group: {description: Its group (unchanged when left out)., type: str}
      mode: {description: Its mode (as for ansible.builtin.file)., type: raw}
  files:
    description: Files to write; their folders must exist (list them in I(folders)).
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: The file's absolute path., type: path, required: true}
      content: {description: The whole content (render templates with the template lookup)., type: str, required: true}
      owner: {description: Its owner (unchanged when left out)., type: str}
      group: {description: Its group (unchanged when left out)., type: str}
      mode: {description: Its mode (as for ansible.builtin.file)., type: raw}
      validate:
        description: A command run on the new content (C(%s) is its path) before it replaces the file.
        type: str
"""

RETURN = r"""
changed_paths:
  description: The folders and files that were created or changed.
  type: list
  elements: str
  returned: always
"""

# Each entry's keys, checked by AnsibleModule: a misspelt key is an error, not a file left with default modes.
FOLDER = {
    "path": {"type": "path", "required": True},
    "owner": {"type": "str"},
    "group": {"type": "str"},
    "mode": {"type": "raw"},
}
FILE = {**FOLDER, "content": {"type": "str", "required": True}, "validate": {"type": "str"}}


def _attributes(module: AnsibleModule, entry: dict) -> dict:
    args = module.load_file_common_arguments({"path": entry["path"]})
    for key in ("owner", "group", "mode"):
        args[key] = entry.get(key)
    return args


def _path(module: AnsibleModule, entry: dict) -> Path:
    path = Path(entry["path"])
    if not path.is_absolute():
        module.fail_json(msg=f"every folder and file needs an absolute path; got {entry['path']!r}")
    return path


def _folder(module: AnsibleModule, entry: dict, diffs: list[dict]) -> bool:
    path = _path(module, entry)
    created = not path.is_dir()
    if created:
        if path.exists():
            module.fail_json(msg=f"{path} exists and is not a folder")
        diffs.append(
            {"before_header": str(path), "after_header": str(path), "before": "absent\n", "after": "directory\n"}
        )
        if module.check_mode:
            return True
        path.mkdir(parents=True, exist_ok=True)
    return module.set_fs_attributes_if_different(_attributes(module, entry), created)


def _staged(module: AnsibleModule, entry: dict, path: Path, data: bytes) -> str:
    """The new content in a file beside `path` (so the rename is atomic), already with the entry's owner, group
    and mode (so a secret is never readable under a default mode, as with atomic_move, which gives a new file
    the umask's mode first), and checked by the entry's `validate` command if it has one."""
    validate = entry.get("validate")
    if not path.parent.is_dir():
        module.fail_json(msg=f"cannot write {path}: its folder {path.parent} does not exist (list it in folders)")
    if validate and "%s" not in validate:
        module.fail_json(msg=f"validate for {path} must contain %s (where the new content's path goes)")
    handle, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    module.set_fs_attributes_if_different({**_attributes(module, entry), "path": staged}, True)
    if validate:
        rc, out_text, err_text = module.run_command(validate % staged)
        if rc != 0:
            Path(staged).unlink()
            module.fail_json(msg=f"{path} did not validate: {(err_text or out_text).strip()}", rc=rc)
    return staged


def _file(module: AnsibleModule, entry: dict, diffs: list[dict]) -> bool:
    path = _path(module, entry)
    data = entry["content"].encode()
    try:
        before: bytes | None = path.read_bytes()
    except FileNotFoundError:
        before = None
    written = before != data
    if written:
        diffs.append(
            {
                "before_header": str(path),
                "after_header": str(path),
                "before": "" if before is None else before.decode(errors="replace"),
                "after": data.decode(errors="replace"),
            }
        )
        if module.check_mode:
            return True
        Path(_staged(module, entry, path, data)).replace(path)
    return module.set_fs_attributes_if_different(_attributes(module, entry), written)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "folders": {"type": "list", "elements": "dict", "default": [], "options": FOLDER},
            "files": {"type": "list", "elements": "dict", "default": [], "options": FILE},
        },
        supports_check_mode=True,
    )
    changed_paths: list[str] = []
    diffs: list[dict] = []
    for entry in module.params["folders"]:
        if _folder(module, entry, diffs):
            changed_paths.append(entry["path"])
    for entry in module.params["files"]:
        if _file(module, entry, diffs):
            changed_paths.append(entry["path"])
    module.exit_json(changed=bool(changed_paths), changed_paths=changed_paths, diff=diffs)


if __name__ == "__main__":
    main()
