"""Deploy this working tree to a Hugging Face Space, without the git history.

    python -m demo.deploy USER/SPACE                        # CPU basic (2 vCPU, 16 GB)
    python -m demo.deploy USER/SPACE --hardware t4-small    # a GPU Space (billed by the hour)
    python -m demo.deploy USER/SPACE --hardware zero-a10g   # ZeroGPU (shared GPUs, daily quotas)
    python -m demo.deploy USER/SPACE --dry-run              # only list what would be uploaded

Which hardware an account may use is the Hub's decision: paid hardware (every --hardware but cpu-basic
and zero-a10g) needs billing set up; the Hub's ZeroGPU documentation lets a personal account in good
standing host up to 2 ZeroGPU Spaces (PRO: 10); and the Hub may answer even cpu-basic with HTTP 402
(payment required) for an account without a plan. A refusal is reported with the way out.

It uploads the files of the last commit, as they are in the working tree (the app, the bundled
model, the README whose front matter configures the Space) except the tests, benchmarks and CI
scripts, as one commit through ``huggingface_hub``. It refuses files named like secrets and links
that lead out of the repository, and a file only staged is not uploaded. It adds a
``.gitattributes`` that puts large binary files in Git LFS (the Hub refuses files over 10 MB
outside LFS). Pushing this repository's history instead would be refused:
old commits hold larger model shards as plain blobs. On ZeroGPU hardware ``requirements.txt`` is
uploaded with a torch release ZeroGPU's documentation lists, and the ``spaces`` package.

It needs a Hugging Face token with write access (``hf auth login`` or HF_TOKEN) and network access
to the Hub; without either it stops with a sentence saying which is missing.
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parent.parent
EXCLUDED = ("tests/", "benchmarks/", ".ci/", ".github/")
MAX_PLAIN_BYTES = 10_000_000  # the Hub refuses larger files outside Git LFS
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.gz", "*.zip", "*.tar", "*.parquet")
SPACE_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)
HARDWARE = ("cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "a10g-small", "a10g-large", "a100-large",
            "zero-a10g")
ZERO_GPU = "zero-a10g"
# ZeroGPU runs only some torch releases (its documentation lists 2.8.0, 2.9.1, 2.10.0 and 2.11.0): on that
# hardware the Space gets the newest listed one, and the spaces package the app was tested against.
ZERO_GPU_TORCH = "torch==2.11.0"
ZERO_GPU_SPACES = "spaces>=0.51,<0.52"
PLAN_HELP = ("Choose other hardware with --hardware (cpu-basic; zero-a10g, which the Hub lets a personal account "
             "in good standing use for up to 2 Spaces), or set up billing or a plan at "
             "https://huggingface.co/settings/billing, then run this again.")
TORCH_LINE = re.compile(r"(?m)^torch(?=\s*(?:[<>=!~;\[#]|$))[^\n#]*")  # torch's own line, not torchvision's
# Never uploaded, even when committed: the names of keys, tokens and credentials.
SECRET_NAMES = (".env", ".env.*", "*.pem", "*.key", "id_rsa*", "id_ed25519*", "id_ecdsa*", ".netrc", ".pypirc",
                "credentials*", ".git-credentials")
SPACE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


class DeployError(Exception):
    """Why the deployment cannot go ahead, as a sentence for the person running it."""


@dataclass(frozen=True)
class Upload:
    files: tuple[str, ...]  # paths relative to the repository root
    extra: dict[str, bytes]  # generated files: path in the Space -> content

    @property
    def paths(self) -> list[str]:
        return sorted({*self.files, *self.extra})


def tracked_files(root: Path = REPO) -> list[str]:
    """The files of the last commit. A file only staged (``git add``-ed, not committed), such as a ``.env``
    added by mistake, is not among them."""
    try:
        out = subprocess.run(["git", "ls-tree", "-r", "-z", "--name-only", "HEAD"], cwd=root, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DeployError(f"{root} is not a git checkout with a commit (the upload is the files of the last "
                          f"commit): {exc}") from None
    return [p for p in out.decode("utf-8").split("\0") if p]


def looks_secret(path: str) -> bool:
    name = Path(path).name.lower()
    return any(fnmatch.fnmatch(name, pattern) for pattern in SECRET_NAMES)


def check_safe(root: Path, path: str) -> None:
    """Refuse a file that looks like a secret, and a link that leads out of the repository."""
    if looks_secret(path):
        raise DeployError(f"{path} looks like a secret ({', '.join(SECRET_NAMES)}): it is not uploaded to a Space. "
                          "Remove it from git (git rm --cached) and deploy again.")
    file = root / path
    if file.is_symlink():
        target = file.resolve()
        if not target.is_relative_to(root.resolve()):
            raise DeployError(f"{path} is a link to {target}, outside the repository: a deployment uploads only "
                              "the repository's own files. Replace the link with the file, or remove it.")


def needs_lfs(path: str) -> bool:
    return any(fnmatch.fnmatch(Path(path).name, pattern) for pattern in LFS_PATTERNS)


def plan_upload(root: Path = REPO, hardware: str = "cpu-basic") -> Upload:
    """What a deployment uploads: the tracked files that exist, less tests, benchmarks and CI, plus the
    Space's .gitattributes (and on ZeroGPU a requirements.txt with a supported torch)."""
    files = [p for p in tracked_files(root) if not p.startswith(EXCLUDED) and (root / p).is_file()
             and p != ".gitattributes"]
    for p in files:
        check_safe(root, p)
        size = (root / p).stat().st_size
        if size > MAX_PLAIN_BYTES and not needs_lfs(p):
            raise DeployError(f"{p} is {size / 1e6:.1f} MB: the Hub refuses files over 10 MB outside Git LFS, and "
                              f"no LFS rule ({', '.join(LFS_PATTERNS)}) covers it.")
    extra = {".gitattributes": SPACE_GITATTRIBUTES.encode()}
    if hardware == ZERO_GPU:
        reqs = (root / "requirements.txt").read_text(encoding="utf-8")
        extra["requirements.txt"] = (TORCH_LINE.sub(ZERO_GPU_TORCH, reqs).rstrip("\n") +
                                     f"\n# ZeroGPU's own package (demo.runtime.zerogpu)\n{ZERO_GPU_SPACES}\n").encode()
        files = [p for p in files if p != "requirements.txt"]
    return Upload(tuple(files), extra)


def _hub_error(exc: Exception, hardware: str = "cpu-basic") -> DeployError:
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    if isinstance(exc, LocalTokenNotFoundError):
        return DeployError("No Hugging Face token: log in with `hf auth login` or set HF_TOKEN to a token with "
                           "write access.")
    if isinstance(exc, OfflineModeIsEnabled):
        return DeployError("HF_HUB_OFFLINE is set, so the Hub cannot be reached: unset it to deploy.")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return DeployError(f"The Hub refused the token (HTTP {status}): it needs write access to the Space.")
        if status == 402:
            return DeployError(f"The Hub will not run a Space on {hardware} for this account (HTTP 402, payment "
                               f"required): that hardware needs a plan or billing. {PLAN_HELP}")
        return DeployError(f"The Hub answered with an error: {str(exc).splitlines()[0][:200]}")
    return DeployError(f"Could not reach the Hugging Face Hub ({type(exc).__name__}: {str(exc)[:200]}). "
                       "Check the network, then try again.")


def deploy(space_id: str, hardware: str = "cpu-basic", private: bool = False, token: str | None = None,
           root: Path = REPO, dry_run: bool = False, log=print) -> str | None:
    """Upload the working tree to ``space_id`` (created if it does not exist); returns the Space's URL."""
    if not isinstance(space_id, str) or not SPACE_ID.match(space_id):
        raise DeployError(f"the Space must be named OWNER/NAME, got {str(space_id)[:60]!r}")
    if hardware not in HARDWARE:
        raise DeployError(f"hardware must be one of {', '.join(HARDWARE)}; got {str(hardware)[:30]!r}")
    upload = plan_upload(root, hardware)
    total = sum((root / p).stat().st_size for p in upload.files) + sum(map(len, upload.extra.values()))
    log(f"{len(upload.paths)} files, {total / 1e6:.1f} MB, for {space_id} on {hardware}")
    if dry_run:
        for p in upload.paths:
            log(f"  {p}")
        return None
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise DeployError("HF_HUB_OFFLINE is set, so the Hub cannot be reached: unset it to deploy.")
    try:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

        api = HfApi(token=token)
        api.whoami()
        url = api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True,
                              space_hardware=cast(Any, hardware))
        stale = set(api.list_repo_files(space_id, repo_type="space")) - set(upload.paths)
        operations: list[Any] = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(root / p))
                                 for p in upload.files]
        operations += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=data) for p, data in upload.extra.items()]
        operations += [CommitOperationDelete(path_in_repo=p) for p in sorted(stale)]
        api.create_commit(space_id, operations, repo_type="space", commit_message="Deploy GPT Explorer")
        api.request_space_hardware(space_id, cast(Any, hardware))
    except DeployError:
        raise
    except Exception as exc:
        raise _hub_error(exc, hardware) from exc
    log(f"Deployed: {url}")
    return str(url)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Deploy GPT Explorer to a Hugging Face Space (no git history).")
    p.add_argument("space", help="OWNER/NAME of the Space (created if missing)")
    p.add_argument("--hardware", default="cpu-basic", choices=HARDWARE)
    p.add_argument("--private", action="store_true")
    p.add_argument("--token", default=None, help="default: the logged-in token or HF_TOKEN")
    p.add_argument("--dry-run", action="store_true", help="list the files and stop")
    args = p.parse_args(argv)
    try:
        deploy(args.space, args.hardware, args.private, args.token, dry_run=args.dry_run)
    except DeployError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
