"""The README's first two commands stay what CI and users run."""

import os
import re
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands(name):
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return re.findall(r"```bash\n(.*?)\n```", f.read(), flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    test_command = readme_commands("README.md")[1]
    assert "pytest" in test_command and '".[test]"' in test_command
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        ci_lines = [line.strip() for line in f]
    assert test_command in ci_lines


def test_chinese_readme_starts_with_the_same_commands():
    assert readme_commands("README_cn.md")[:2] == readme_commands("README.md")[:2]


def readme_section(name, heading):
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        text = f.read()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def inference_workspace(tmp_path):
    """A scratch directory where the README's relative paths resolve (outputs land here, not in the repo)."""
    for name in ("demo_images", "tools"):
        os.symlink(os.path.join(REPO, name), tmp_path / name)
    return tmp_path


def test_readme_inference_commands_run_as_written(tmp_path, ocr_checkpoint):
    """Every `python tools/infer.py` line of the inference section, against the tiny checkpoint."""
    section = readme_section("README.md", "## Inference")
    commands = [line for line in section.splitlines() if line.startswith("python tools/infer.py")]
    assert len(commands) >= 7
    workspace = inference_workspace(tmp_path)
    for command in commands:
        arguments = shlex.split(command)[1:] + [
            "--model_name_or_path",
            ocr_checkpoint.directory,
            "--max_new_tokens",
            "8",
        ]
        result = subprocess.run(
            [sys.executable, *arguments], cwd=workspace, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, (command, result.stderr)
        assert result.stdout.endswith("\n") and "[paddle_got] INFO Loaded" in result.stderr, command
    assert (workspace / "results.jsonl").read_text().count("\n") == 7  # 5 images + the 2 pages of the PDF


def test_readme_rendering_commands_run_as_written(tmp_path, ocr_checkpoint):
    """The rendering section's commands, with scans/ standing for demo_images/ and results.jsonl read from it."""
    section = readme_section("README.md", "## Rendering")
    commands = [line.split("  #")[0] for line in section.splitlines() if line.startswith("python tools/")]
    assert len(commands) == 5
    workspace = inference_workspace(tmp_path)
    os.symlink(os.path.join(REPO, "demo_images"), workspace / "scans")
    model = ["--model_name_or_path", ocr_checkpoint.directory, "--max_new_tokens", "8"]
    subprocess.run(
        [
            sys.executable,
            "tools/infer.py",
            "--ocr_type",
            "format",
            "--image_file",
            "demo_images/table.png",
            "demo_images/slide.png",
            "--output",
            "results.jsonl",
            *model,
        ],
        cwd=workspace,
        check=True,
        capture_output=True,
    )
    for command in commands:
        arguments = shlex.split(command)[1:] + (model if "infer.py" in command else [])
        result = subprocess.run(
            [sys.executable, *arguments], cwd=workspace, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, (command, result.stderr)
    assert (workspace / "table.html").read_text().count('<img src="data:image/png;base64,') == 1
    two_pages = (workspace / "two_pages.html").read_text()  # the whole PDF in one page, a section per PDF page
    assert two_pages.count('<section class="page with-image"') == 2 and "<title>two_pages.pdf</title>" in two_pages
    assert sorted(os.listdir(workspace / "pages")) == sorted(
        [
            os.path.splitext(name)[0] + ".html"
            for name in os.listdir(os.path.join(REPO, "demo_images"))
            if not name.endswith(".pdf")
        ]
        + ["two_pages_page1.html", "two_pages_page2.html"]
    )
    assert sorted(os.listdir(workspace / "md")) == ["slide.md", "table.md"]


def test_readme_python_api_runs_as_written(tmp_path, ocr_checkpoint):
    section = readme_section("README.md", "## Inference")
    snippet = re.search(r"```python\n(.*?)\n```", section, flags=re.S).group(1)
    assert '"stepfun-ai/GOT-OCR2_0"' in snippet
    snippet = snippet.replace('"stepfun-ai/GOT-OCR2_0"', repr(ocr_checkpoint.directory))
    workspace = inference_workspace(tmp_path)
    result = subprocess.run([sys.executable, "-c", snippet], cwd=workspace, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("demo_images/table.png ")


def test_readme_try_it_block_runs_as_written(tmp_path):
    """The 'Try it without the weights' commands, in order, with fewer samples and steps (the real run takes
    minutes; the README reports its result)."""
    section = readme_section("README.md", "## Try it without the weights")
    commands = re.search(r"```bash\n(.*?)\n```", section, flags=re.S).group(1).splitlines()
    assert [shlex.split(c)[1] for c in commands] == [
        "tools/make_synth_data.py",
        "tools/make_synth_data.py",
        "tools/train.py",
        "tools/infer.py",
        "tools/eval.py",
    ]
    smaller = {"3000": "24", "50": "6", "450": "2"}
    for name in ("configs", "tools"):
        os.symlink(os.path.join(REPO, name), tmp_path / name)
    for command in commands:
        arguments = [smaller.get(a, a) for a in shlex.split(command)[1:]]
        result = subprocess.run([sys.executable, *arguments], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (command, result.stderr[-2000:])
    assert (tmp_path / "output" / "try" / "heldout.jsonl").read_text().count("\n") == 6
    assert re.search(r"^samples\s+6$", result.stdout, flags=re.M), result.stdout
