"""Deploy the last commit of this repository to a Hugging Face Space, without the git history.

    python -m demo.deploy USER/SPACE                        # CPU basic (2 vCPU, 16 GB)
    python -m demo.deploy USER/SPACE --hardware t4-small    # a GPU Space (billed by the hour)
    python -m demo.deploy USER/SPACE --hardware zero-a10g   # ZeroGPU (shared GPUs, daily quotas)
    python -m demo.deploy USER/SPACE --dry-run              # only list what would be uploaded

Which hardware an account may use is the Hub's decision: paid hardware (every --hardware but cpu-basic
and zero-a10g) needs billing set up; the Hub's ZeroGPU documentation lets a personal account in good
standing host up to 2 ZeroGPU Spaces (PRO: 10); and the Hub may answer even cpu-basic with HTTP 402
(payment required) for an account without a plan. A refusal is reported with the way out.

It uploads the files of the last commit, as that commit holds them (the app, the bundled model, the
README whose front matter configures the Space) except the tests, benchmarks and CI scripts, as one
commit through ``huggingface_hub``: a file only staged, or changed and not committed, is not uploaded
(nor its change). A file the commit keeps in Git LFS (a checkout set up that way) is uploaded with the
content its pointer names, from git's LFS store (``git lfs pull`` fetches it), never as the pointer.
It refuses files named like secrets, and a committed link unless it leads to another file of the
commit that may be uploaded (whose content then goes in its place). It adds a
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
import hashlib
import posixpath
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parent.parent
EXCLUDED = ("tests/", "benchmarks/", ".ci/", ".github/")
MAX_PLAIN_BYTES = 10_000_000  # the Hub refuses larger files outside Git LFS
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\n"  # how a Git LFS pointer file begins
LFS_POINTER_MAX = 1024  # bytes: a pointer is smaller (the Git LFS specification)
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
class Committed:
    """A file of the last commit: git's mode (120000: a link, whose content is the path it leads to), blob, size;
    for a file kept in Git LFS, the local copy of its content (``lfs``) and that content's size."""

    mode: str
    blob: str
    size: int
    lfs: str | None = None

    @property
    def is_link(self) -> bool:
        return self.mode == "120000"


@dataclass(frozen=True)
class Upload:
    files: dict[str, Committed]  # path in the Space -> the committed blob uploaded there
    extra: dict[str, bytes]  # generated files: path in the Space -> content

    @property
    def paths(self) -> list[str]:
        return sorted({*self.files, *self.extra})

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values()) + sum(map(len, self.extra.values()))


def _git(root: Path, *args: str, input: bytes | None = None) -> bytes:
    try:
        return subprocess.run(["git", *args], cwd=root, input=input, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DeployError(f"{root} is not a git checkout with a commit (the upload is the files of the last "
                          f"commit): {exc}") from None


def committed_files(root: Path = REPO) -> dict[str, Committed]:
    """The files of the last commit (``git ls-tree``). A file only staged (``git add``-ed, not committed),
    such as a ``.env`` added by mistake, is not among them; a file changed since is there as committed."""
    files = {}
    for record in _git(root, "ls-tree", "-r", "-z", "-l", "--full-tree", "HEAD").split(b"\0"):
        if not record:
            continue
        meta, path = record.decode("utf-8").split("\t", 1)
        mode, kind, blob, size = meta.split()
        if kind == "blob":  # not a submodule's commit
            files[path] = Committed(mode, blob, int(size))
    return files


def tracked_files(root: Path = REPO) -> list[str]:
    """The paths of the last commit's files."""
    return list(committed_files(root))


def blob_content(root: Path, blob: str) -> bytes:
    return _git(root, "cat-file", "blob", blob)


def _small_blobs(root: Path, blobs: list[str]) -> dict[str, bytes]:
    """The content of each of ``blobs`` (small ones), read by one ``git cat-file --batch``."""
    if not blobs:
        return {}
    out = _git(root, "cat-file", "--batch", input="".join(b + "\n" for b in blobs).encode())
    contents, at = {}, 0
    for blob in blobs:
        header_end = out.index(b"\n", at)
        size = int(out[at:header_end].split()[2])
        contents[blob] = out[header_end + 1:header_end + 1 + size]
        at = header_end + 1 + size + 1
    return contents


def with_lfs_content(root: Path, files: dict[str, Committed]) -> dict[str, Committed]:
    """``files`` with each committed Git LFS pointer (a checkout whose large files are kept in LFS)
    standing for the content it names, from git's LFS store: uploading the pointer would give the
    Space a model file of 130 bytes. A pointer whose content is not here is refused with the way out."""
    small = _small_blobs(root, sorted({f.blob for f in files.values() if f.size < LFS_POINTER_MAX}))
    pointers = {p: f for p, f in files.items() if small.get(f.blob, b"").startswith(LFS_POINTER)}
    if not pointers:
        return files
    store = Path(_git(root, "rev-parse", "--git-common-dir").decode().strip())
    store = (store if store.is_absolute() else root / store) / "lfs" / "objects"
    out = dict(files)
    for path, entry in pointers.items():
        fields = dict(line.split(" ", 1) for line in small[entry.blob].decode("ascii", "replace").splitlines()
                      if " " in line)
        oid = fields.get("oid", "").removeprefix("sha256:")
        stored = store / oid[:2] / oid[2:4] / oid
        if not re.fullmatch(r"[0-9a-f]{64}", oid) or not stored.is_file() or _sha256(stored) != oid:
            raise DeployError(f"{path} is kept in Git LFS and its content is not in this checkout (only its "
                              "pointer is): run `git lfs pull`, then deploy again.")
        out[path] = replace(entry, size=stored.stat().st_size, lfs=str(stored))
    return out


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def looks_secret(path: str) -> bool:
    name = Path(path).name.lower()
    return any(fnmatch.fnmatch(name, pattern) for pattern in SECRET_NAMES)


def _refuse_secret(path: str) -> None:
    if looks_secret(path):
        raise DeployError(f"{path} looks like a secret ({', '.join(SECRET_NAMES)}): it is not uploaded to a Space. "
                          "Remove it from git (git rm --cached) and deploy again.")


def resolve(root: Path, files: dict[str, Committed], path: str) -> Committed:
    """What is uploaded as ``path``: its committed blob, or for a committed link the blob of the file it
    leads to, which must be a file of the same commit that may be uploaded itself (links followed inside
    the commit only, never on the disk)."""
    _refuse_secret(path)
    entry, seen = files[path], [path]
    while entry.is_link:
        target = blob_content(root, entry.blob).decode("utf-8", errors="replace")
        where = posixpath.normpath(posixpath.join(posixpath.dirname(seen[-1]), target))
        if posixpath.isabs(target) or where == ".." or where.startswith("../"):
            raise DeployError(f"{path} is a link to {target}, outside the repository: a deployment uploads only "
                              "the repository's own files. Replace the link with the file, or remove it.")
        if where not in files or where.startswith(EXCLUDED) or where in seen:
            raise DeployError(f"{path} is a link to {where}, which is not a file this deployment uploads (or the "
                              "links go round in a circle): replace the link with the file, or remove it.")
        _refuse_secret(where)
        entry = files[where]
        seen.append(where)
    return entry


def needs_lfs(path: str) -> bool:
    return any(fnmatch.fnmatch(Path(path).name, pattern) for pattern in LFS_PATTERNS)


def plan_upload(root: Path = REPO, hardware: str = "cpu-basic") -> Upload:
    """What a deployment uploads: the last commit's files, less tests, benchmarks and CI, plus the Space's
    .gitattributes (and on ZeroGPU a requirements.txt with a supported torch)."""
    committed = committed_files(root)
    files = with_lfs_content(root, {p: resolve(root, committed, p) for p in committed
                                    if not p.startswith(EXCLUDED) and p != ".gitattributes"})
    for p, entry in files.items():
        if entry.size > MAX_PLAIN_BYTES and not needs_lfs(p):
            raise DeployError(f"{p} is {entry.size / 1e6:.1f} MB: the Hub refuses files over 10 MB outside Git "
                              f"LFS, and no LFS rule ({', '.join(LFS_PATTERNS)}) covers it.")
    extra = {".gitattributes": SPACE_GITATTRIBUTES.encode()}
    if hardware == ZERO_GPU and "requirements.txt" in files:
        reqs = blob_content(root, files.pop("requirements.txt").blob).decode("utf-8")
        extra["requirements.txt"] = (TORCH_LINE.sub(ZERO_GPU_TORCH, reqs).rstrip("\n") +
                                     f"\n# ZeroGPU's own package (demo.runtime.zerogpu)\n{ZERO_GPU_SPACES}\n").encode()
    return Upload(files, extra)


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
    """Upload the last commit's files to ``space_id`` (created if it does not exist); returns the Space's URL."""
    if not isinstance(space_id, str) or not SPACE_ID.match(space_id):
        raise DeployError(f"the Space must be named OWNER/NAME, got {str(space_id)[:60]!r}")
    if hardware not in HARDWARE:
        raise DeployError(f"hardware must be one of {', '.join(HARDWARE)}; got {str(hardware)[:30]!r}")
    upload = plan_upload(root, hardware)
    log(f"{len(upload.paths)} files, {upload.total_bytes / 1e6:.1f} MB, for {space_id} on {hardware}")
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
        operations: list[Any] = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=f.lfs or blob_content(root, f.blob))
                                 for p, f in upload.files.items()]
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
