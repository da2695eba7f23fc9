"""The GitHub Pages workflow (it runs where the repository is hosted): what it must do, parsed."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_pages_workflow_builds_the_small_book_and_publishes_it():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "book.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "main" in triggers["push"]["branches"]
    assert workflow["permissions"]["pages"] == "write" and workflow["permissions"]["id-token"] == "write"
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    assert build["env"]["TLUTILS_PROFILE"] == "small"
    runs = "\n".join(step.get("run", "") for step in build["steps"])
    assert '"torch==2.13.0"' in runs and "-c constraints.txt" in runs  # never an unpinned torch
    assert "make book" in runs
    uses = [step.get("uses", "") for step in build["steps"]]
    assert any(u.startswith("actions/setup-node") for u in uses)  # make mathjax needs npm
    artifact = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert artifact["with"]["path"] == "_build/html"
    # the tasks without a hub source (SICK, Amazon): a staged folder if one is configured, else fetched
    data = [s for s in build["steps"] if "TLUTILS_DATA_DIR" in s.get("run", "")]
    assert len(data) == 2 and all("TLUTILS_DATA_URL" in s["if"] for s in data)
    from tlutils.data import TASKS, get_task

    hubless = {t.folder for t in TASKS.values() if t.hub is None}
    fetch = next(s["run"] for s in data if "--fetch" in s["run"])
    fetched = fetch.split("--fetch")[1].split("--to")[0].split()
    assert {get_task(name).folder for name in fetched} == hubless  # every folder the hub lacks
    assert deploy["needs"] == "build" and deploy["steps"][0]["uses"].startswith("actions/deploy-pages")
