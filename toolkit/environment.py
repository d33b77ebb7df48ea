"""What the lab's child processes see of the caller's environment: an allow-list, never the whole of it.

`lab` runs in shells that hold secrets (PULUMI_CONFIG_PASSPHRASE, AWS_SECRET_ACCESS_KEY, GITHUB_TOKEN, ...),
and notebook code is the least trusted code the lab runs. So MLflow, JupyterLab and every trial's kernel get
only the variables named here, plus what the lab sets for them (the trial's MLFLOW_RUN_ID, a slot's
CUDA_VISIBLE_DEVICES, ...):

- the session: PATH, HOME, USER, LOGNAME, SHELL, LANG, LC_*, TZ, TMPDIR, TERM, XDG_* folders;
- the Python environment: VIRTUAL_ENV, CONDA_PREFIX, PYTHON* (PYTHONPATH, PYTHONHASHSEED, ...), LD_LIBRARY_PATH;
- the network: proxies (HTTPS_PROXY, NO_PROXY, ... in both cases) and CA bundles (SSL_CERT_FILE, ...);
- compute: CUDA_*, NVIDIA_*, NCCL_*, the thread counts of OpenMP, MKL, OpenBLAS and numexpr; dataset caches
  (HF_HOME, TORCH_HOME, SCIKIT_LEARN_DATA);
- the lab's own: MLFLOW_*, LAB_*, JUPYTER_* folders;
- and whatever the user names in LAB_PASS_ENV (space- or comma-separated), for a kernel that needs a key.

Among the families (the names matched by prefix), a name that looks like a secret (TOKEN, SECRET, PASSWORD,
PASSPHRASE, CREDENTIAL, ..._KEY) is left out all the same: MLFLOW_TRACKING_TOKEN, JUPYTER_TOKEN, HF_TOKEN.
Only the tracker (MLflow, which writes the artifacts to the bucket) also gets the bucket's credentials
(GOOGLE_APPLICATION_CREDENTIALS, CLOUDSDK_CONFIG, the project, STORAGE_EMULATOR_HOST); kernels log artifacts
through MLflow's proxy and need none.

Installs of an experiment's environment (uv, and the build scripts of the sdists it builds, which are as untrusted
as notebook code) get the same allow-list plus uv's own settings (`for_installs`, INSTALLS): where its cache is, the
indexes the user set for uv (UV_INDEX_URL, UV_DEFAULT_INDEX, UV_INDEX, UV_EXTRA_INDEX_URL, UV_FIND_LINKS,
UV_NO_INDEX, UV_OFFLINE, UV_INDEX_STRATEGY, UV_KEYRING_PROVIDER), its TLS (UV_NATIVE_TLS, UV_SYSTEM_CERTS), timeouts
and concurrency, its config file. uv does not read PIP_INDEX_URL: set UV_INDEX_URL (or uv.toml). An index's password
in a variable (UV_INDEX_<NAME>_PASSWORD) is left out like every secret: put it in a keyring (UV_KEYRING_PROVIDER) or
name it in LAB_PASS_ENV. What the caller's files hold (~/.netrc, ~/.config) is not the environment: a build script
can read those as the user can.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TERM",
        "XDG_CACHE_HOME",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "XDG_RUNTIME_DIR",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "LD_LIBRARY_PATH",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "OPENBLAS_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "NUMEXPR_MAX_THREADS",
        "HF_HOME",
        "TORCH_HOME",
        "SCIKIT_LEARN_DATA",
    }
)
PREFIXES = ("LC_", "PYTHON", "CUDA_", "NVIDIA_", "NCCL_", "OMP_", "MKL_", "MLFLOW_", "LAB_", "JUPYTER_")
SECRET = re.compile(r"TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|PRIVATE|_KEY($|_)|_AUTH", re.IGNORECASE)
# The tracker writes artifacts to the bucket: the client's credentials and where it finds its project.
BUCKET = (
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_PROJECT",
    "GCLOUD_PROJECT",
    "CLOUDSDK_CONFIG",
    "STORAGE_EMULATOR_HOST",
)
# uv's own settings, for the installs of experiments' environments (toolkit.envs.install); none holds a secret.
INSTALLS = frozenset(
    {
        "UV_CACHE_DIR",
        "UV_INDEX_URL",
        "UV_DEFAULT_INDEX",
        "UV_INDEX",
        "UV_EXTRA_INDEX_URL",
        "UV_FIND_LINKS",
        "UV_NO_INDEX",
        "UV_OFFLINE",
        "UV_INDEX_STRATEGY",
        "UV_KEYRING_PROVIDER",
        "UV_NATIVE_TLS",
        "UV_SYSTEM_CERTS",
        "UV_HTTP_TIMEOUT",
        "UV_HTTP_RETRIES",
        "UV_CONCURRENT_DOWNLOADS",
        "UV_CONCURRENT_BUILDS",
        "UV_CONCURRENT_INSTALLS",
        "UV_CONFIG_FILE",
        "UV_NO_CONFIG",
    }
)
PASS_ENV = "LAB_PASS_ENV"  # noqa: S105 -- the name of a variable: the user's own additions, by name


def allowed_name(name: str) -> bool:
    """Whether a variable of the caller's passes to the lab's services and kernels."""
    if name in NAMES:
        return True
    return name.startswith(PREFIXES) and not SECRET.search(name)


def passed(source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's variables that pass: the allow-list, and the names in LAB_PASS_ENV."""
    source = os.environ if source is None else source
    extra = set(re.split(r"[\s,]+", source.get(PASS_ENV, "").strip())) - {""}
    return {name: value for name, value in source.items() if allowed_name(name) or name in extra}


def for_tracker(source: Mapping[str, str] | None = None) -> dict[str, str]:
    """MLflow's server and its `db upgrade`: the allow-list and the bucket's credentials."""
    source = os.environ if source is None else source
    env = passed(source)
    env.update({name: source[name] for name in BUCKET if name in source})
    return env


def for_kernels(*layers: Mapping[str, str], source: Mapping[str, str] | None = None) -> dict[str, str]:
    """JupyterLab, papermill and their kernels: the allow-list, then the lab's own `layers` on top (a slot's
    CUDA_VISIBLE_DEVICES, the trial's MLFLOW_RUN_ID, ...)."""
    env = passed(source)
    for layer in layers:
        env.update(layer)
    return env


def for_installs(source: Mapping[str, str] | None = None) -> dict[str, str]:
    """uv installing an experiment's environment, and the build scripts it runs: the allow-list and uv's own
    settings (INSTALLS), never the caller's secrets."""
    source = os.environ if source is None else source
    env = passed(source)
    env.update({name: source[name] for name in INSTALLS if name in source})
    return env
