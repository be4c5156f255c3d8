"""Deploying to a Hugging Face Space: what is uploaded, file sizes against the Hub's 10 MB limit
outside Git LFS, and clear failures without a token or a network (no Hub is reachable here)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from demo import deploy

REPO = Path(__file__).resolve().parent.parent


def test_every_tracked_file_over_10_mb_is_covered_by_an_lfs_rule():
    for path in deploy.tracked_files(REPO):
        file = REPO / path
        if file.is_file() and file.stat().st_size > deploy.MAX_PLAIN_BYTES:
            assert deploy.needs_lfs(path), f"{path} is over 10 MB and no LFS rule covers it"
    shards = list((REPO / "models" / "gutenberg-gpt").glob("*.safetensors"))
    assert shards and all(s.stat().st_size < deploy.MAX_PLAIN_BYTES for s in shards)  # even without LFS


def test_the_upload_is_the_app_and_the_bundled_model_without_tests_or_benchmarks():
    upload = deploy.plan_upload(REPO)
    paths = upload.paths
    for needed in ("app.py", "requirements.txt", "README.md", "demo/app_factory.py", "demo/ui/page.py",
                   "models/catalog.json", "models/gutenberg-gpt/config.json", "models/gutenberg-gpt/tokenizer.json",
                   "models/gutenberg-gpt/model.safetensors.index.json", ".gitattributes"):
        assert needed in paths, needed
    assert {p.name for p in (REPO / "models" / "gutenberg-gpt").glob("*.safetensors")} <= {Path(p).name for p in paths}
    assert not [p for p in paths if p.startswith(("tests/", "benchmarks/", ".ci/"))]
    assert "*.safetensors filter=lfs" in upload.extra[".gitattributes"].decode()
    assert upload.extra.keys() == {".gitattributes"}
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("---\n") and "sdk: gradio" in readme and "app_file: app.py" in readme
    assert 'python_version: "3.12"' in readme  # a Python ZeroGPU supports (3.10 or 3.12)


def test_zero_gpu_gets_a_torch_it_supports_and_the_same_other_requirements():
    upload = deploy.plan_upload(REPO, deploy.ZERO_GPU)
    reqs = upload.extra["requirements.txt"].decode()
    assert "requirements.txt" not in upload.files
    assert deploy.ZERO_GPU_TORCH in reqs and "<2.14" not in reqs
    # a release ZeroGPU's documentation lists (2.8.0, 2.9.1, 2.10.0, 2.11.0), and ZeroGPU's own package
    assert deploy.ZERO_GPU_TORCH.split("==")[1] in ("2.8.0", "2.9.1", "2.10.0", "2.11.0")
    assert deploy.ZERO_GPU_SPACES in reqs.splitlines()
    # the rewrite touches torch's own line, not a 'torchvision' or 'torch-x' one
    assert deploy.TORCH_LINE.sub("T", "torchvision>=1\ntorch-x==2\ntorch>=2,<3  # note\n") == \
        "torchvision>=1\ntorch-x==2\nT# note\n"
    ours = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert [line for line in reqs.splitlines() if not line.startswith("torch")][:len(ours) - 1] == \
        [line for line in ours if not line.startswith("torch")]


@pytest.mark.parametrize("space, hardware, message", [
    ("no-slash", "cpu-basic", "OWNER/NAME"),
    ("a/b/c", "cpu-basic", "OWNER/NAME"),
    ("me/space", "a-quantum-computer", "hardware must be one of"),
])
def test_bad_arguments_are_refused_before_anything_is_sent(space, hardware, message):
    with pytest.raises(deploy.DeployError, match=message):
        deploy.deploy(space, hardware, dry_run=True, log=lambda *a: None)


@pytest.mark.parametrize("hardware", ["cpu-basic", "t4-small"])
def test_a_plan_refusal_names_the_cause_and_the_way_out(monkeypatch, tmp_path, hardware):
    """The Hub answers 402 (payment required) when the account may not run a Space on that hardware."""
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    def refuse(self, *args, **kwargs):
        request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
        raise HfHubHTTPError("402 Client Error: Payment Required", response=httpx.Response(402, request=request))

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "whoami", lambda self, *a, **k: {"name": "someone"})
    monkeypatch.setattr(HfApi, "create_repo", refuse)
    with pytest.raises(deploy.DeployError) as caught:
        deploy.deploy("someone/gpt-explorer", hardware, token="hf_x", log=lambda *a: None)
    message = str(caught.value)
    assert "HTTP 402" in message and hardware in message and "--hardware" in message and "billing" in message


def run_cli(tmp_path, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    base.update(HF_HOME=str(tmp_path / "hf-home"), **env)  # no cached token
    return subprocess.run([sys.executable, "-m", "demo.deploy", "someone/gpt-explorer"], cwd=REPO, env=base,
                          capture_output=True, text=True, timeout=180)


def test_without_a_token_it_says_so(tmp_path):
    r = run_cli(tmp_path, HF_HUB_OFFLINE="0")
    assert r.returncode == 2 and "No Hugging Face token" in r.stderr and "Traceback" not in r.stderr


def test_offline_it_says_so(tmp_path):
    r = run_cli(tmp_path, HF_HUB_OFFLINE="1", HF_TOKEN="hf_not_a_real_token")
    assert r.returncode == 2 and "HF_HUB_OFFLINE" in r.stderr and "Traceback" not in r.stderr


def test_without_a_network_it_says_so(tmp_path):
    r = run_cli(tmp_path, HF_HUB_OFFLINE="0", HF_TOKEN="hf_not_a_real_token")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "Could not reach the Hugging Face Hub" in r.stderr or "The Hub" in r.stderr, r.stderr


def test_dry_run_lists_the_files(capsys):
    assert deploy.main(["someone/gpt-explorer", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "app.py" in out and "tests/" not in out


def git_repo(root: Path) -> None:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / "app.py").write_text("print('app')\n")
    (root / "requirements.txt").write_text("gradio\n")
    subprocess.run([*git, "add", "app.py", "requirements.txt"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "app"], cwd=root, check=True)


def test_a_file_only_staged_is_not_uploaded(tmp_path):
    git_repo(tmp_path)
    (tmp_path / "notes.txt").write_text("draft\n")
    subprocess.run(["git", "add", "notes.txt"], cwd=tmp_path, check=True)
    assert list(deploy.plan_upload(tmp_path).files) == ["app.py", "requirements.txt"]


def test_the_upload_is_what_the_commit_holds_not_a_later_change(tmp_path):
    git_repo(tmp_path)
    (tmp_path / "app.py").write_text("print('app')\nHF_TOKEN = 'hf_pasted_while_debugging'\n")  # not committed
    upload = deploy.plan_upload(tmp_path)
    assert deploy.blob_content(tmp_path, upload.files["app.py"].blob) == b"print('app')\n"
    assert upload.total_bytes == len("print('app')\n") + len("gradio\n") + len(deploy.SPACE_GITATTRIBUTES)


@pytest.mark.parametrize("name", [".env", "server.pem", "id_rsa", "deploy.key", ".netrc"])
def test_a_committed_file_named_like_a_secret_is_refused(tmp_path, name):
    git_repo(tmp_path)
    (tmp_path / name).write_text("HF_TOKEN=hf_secret\n")
    subprocess.run(["git", "add", name], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "oops"],
                   cwd=tmp_path, check=True)
    with pytest.raises(deploy.DeployError, match="looks like a secret"):
        deploy.plan_upload(tmp_path)


def test_a_link_out_of_the_repository_is_refused(tmp_path):
    repo, outside = tmp_path / "repo", tmp_path / "outside.txt"
    repo.mkdir()
    git_repo(repo)
    outside.write_text("not the project's\n")
    (repo / "data.txt").symlink_to(outside)
    subprocess.run(["git", "add", "data.txt"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "link"],
                   cwd=repo, check=True)
    with pytest.raises(deploy.DeployError, match="outside the repository"):
        deploy.plan_upload(repo)


def commit_link(repo: Path, name: str, target: str) -> None:
    (repo / name).symlink_to(target)
    subprocess.run(["git", "add", name], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "link"],
                   cwd=repo, check=True)


@pytest.mark.parametrize("target", [".env", ".git/config", "sub/../.env", "missing.txt", "loop.txt"])
def test_a_link_inside_the_repository_to_a_file_not_uploaded_is_refused(tmp_path, target):
    """A link to a secret the commit does not hold (.env beside it, git's own config) would upload it."""
    git_repo(tmp_path)
    (tmp_path / ".env").write_text("HF_TOKEN=hf_secret\n")  # not committed
    if target == "loop.txt":
        commit_link(tmp_path, "loop.txt", "notes.txt")
    commit_link(tmp_path, "notes.txt", target)
    with pytest.raises(deploy.DeployError, match="not a file this deployment uploads|looks like a secret"):
        deploy.plan_upload(tmp_path)


def test_a_link_to_a_committed_file_uploads_that_files_content(tmp_path):
    git_repo(tmp_path)
    commit_link(tmp_path, "main.py", "app.py")
    upload = deploy.plan_upload(tmp_path)
    assert upload.files["main.py"] == upload.files["app.py"] and not upload.files["main.py"].is_link


def commit_lfs_pointer(repo: Path, name: str, content: bytes, stored: bool) -> None:
    """Commit ``name`` as Git LFS keeps it: a pointer in the commit and (``stored``) the content in
    git's LFS store, laid out as the Git LFS specification says (no git-lfs needed)."""
    oid = hashlib.sha256(content).hexdigest()
    (repo / name).write_bytes(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(content)}\n"
                              .encode())
    if stored:
        where = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
        where.parent.mkdir(parents=True)
        where.write_bytes(content)
    subprocess.run(["git", "add", name], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "lfs"],
                   cwd=repo, check=True)


def test_a_file_kept_in_git_lfs_is_uploaded_with_its_content_not_its_pointer(tmp_path):
    git_repo(tmp_path)
    weights = os.urandom(4096)
    commit_lfs_pointer(tmp_path, "model.safetensors", weights, stored=True)
    upload = deploy.plan_upload(tmp_path)
    entry = upload.files["model.safetensors"]
    assert entry.lfs and Path(entry.lfs).read_bytes() == weights and entry.size == len(weights)
    assert upload.files["app.py"].lfs is None  # plain files as committed
    plain = len("print('app')\n") + len("gradio\n") + len(deploy.SPACE_GITATTRIBUTES)
    assert upload.total_bytes == len(weights) + plain


def test_a_git_lfs_pointer_without_its_content_is_refused_with_the_way_out(tmp_path):
    git_repo(tmp_path)
    commit_lfs_pointer(tmp_path, "model.safetensors", b"weights never fetched", stored=False)
    with pytest.raises(deploy.DeployError, match="kept in Git LFS.*git lfs pull"):
        deploy.plan_upload(tmp_path)
