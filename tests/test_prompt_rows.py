"""Prompts from a file (``prompt: {file: prompts.txt}``) and row tables (``rows: shots.csv``, .jsonl, .yaml).

Both are read at validate; a problem is reported at the file's own ``file:line``. A prompt file is a sweep
(one prompt a line, ``#`` comments, blank lines skipped); a rows table makes one job per row (not a product),
each row validated like a stage (an unknown column gets a "did you mean").
"""

from __future__ import annotations

from pathlib import Path

from conftest import manifest_records

from sdbatch import cli

HEAD = """\
name: rows
model: sdbatch/tiny-sd
defaults: {steps: 2, width: 32, height: 32}
stages:
"""


def write(tmp_path: Path, stages: str, **files: str) -> Path:
    for name, text in files.items():
        (tmp_path / name.replace("_", ".", 1)).write_text(text)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(HEAD + stages)
    return recipe


def test_prompt_file_is_a_sweep_end_to_end(tmp_path, capsys):
    recipe = write(tmp_path, """\
  - name: listed
    type: generate
    prompt: {file: prompts.txt}
    negative_prompt: {file: negatives.txt}
    seeds: [1, 2]
""", prompts_txt="# prompts for tonight\na lighthouse at dusk\n\n   a castle, (stone:1.2), #2   \n# done\n",
                   negatives_txt="blurry\n")
    out = tmp_path / "out"
    assert cli.main(["run", str(recipe), "--out", str(out)]) == 0
    records = manifest_records(out, "output")
    assert sorted((r["prompt"], r["seed"]) for r in records) == [
        ("a castle, (stone:1.2), #2", 1), ("a castle, (stone:1.2), #2", 2),
        ("a lighthouse at dusk", 1), ("a lighthouse at dusk", 2)]
    assert {r["negative_prompt"] for r in records} == {"blurry"}
    capsys.readouterr()
    assert cli.main(["run", str(recipe), "--out", str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_prompt_file_problems_are_at_its_own_line(tmp_path, capsys):
    recipe = write(tmp_path, """\
  - {name: a, type: generate, prompt: {file: prompts.txt}}
  - {name: b, type: generate, prompt: {file: missing.txt}}
  - {name: c, type: generate, prompt: {file: prompts.txt}, wildcards: random, negative_prompt: {fiel: x}}
  - {name: d, type: generate, prompt: {file: wild.txt}}
""", prompts_txt="ok\n# fine\n" + "x" * 10_001 + "\n", wild_txt="fine\n\na __nope__ cat\n")
    capsys.readouterr()
    assert cli.main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    prompts = tmp_path / "prompts.txt"
    assert f"{prompts}:3: stages[0].prompt: a prompt of 10,001 characters is over the limit of 10,000" in err
    assert f"{recipe}:6: stages[1].prompt: 'missing.txt': cannot read the prompt file" in err
    assert f"{recipe}:7: stages[2].negative_prompt: a mapping here is {{file: prompts.txt}}" in err
    assert f"{tmp_path / 'wild.txt'}:3: stages[3].prompt[1]: wildcard __nope__" in err
    assert "Traceback" not in err


def test_rows_table_makes_one_job_per_row_end_to_end(tmp_path, capsys):
    recipe = write(tmp_path, """\
  - name: table
    type: generate
    guidance: 5
    rows: shots.csv
  - name: lines
    type: generate
    prompt: a default prompt
    rows: shots.jsonl
  - name: listed
    type: generate
    rows: shots.yaml
""", shots_csv='prompt,seed,steps,guidance,scheduler\na red fox,1,2,7,Euler a\n"a fox, blue",2,3,,\n',
                   shots_jsonl='{"prompt": "an owl", "seed": 3}\n\n{"seed": 4, "negative_prompt": "ugly"}\n',
                   shots_yaml="- {prompt: a bat, seed: 5, width: 64}\n- prompt: a moth\n  seed: 6\n")
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli.main(["validate", str(recipe)]) == 0
    assert "6 job(s) (table: 2, lines: 2, listed: 2)" in capsys.readouterr().out
    assert cli.main(["run", str(recipe), "--out", str(out)]) == 0
    records = {(r["stage"], r["seed"]): r for r in manifest_records(out, "output")}
    assert len(records) == 6
    fox = records[("table", 1)]
    assert (fox["prompt"], fox["params"]["steps"], fox["params"]["guidance"], fox["params"]["scheduler"]) == \
        ("a red fox", 2, 7.0, "euler-a")
    blue = records[("table", 2)]
    assert (blue["prompt"], blue["params"]["steps"], blue["params"]["guidance"]) == ("a fox, blue", 3, 5.0)
    assert records[("lines", 3)]["prompt"] == "an owl"
    assert (records[("lines", 4)]["prompt"], records[("lines", 4)]["negative_prompt"]) == ("a default prompt", "ugly")
    assert records[("listed", 5)]["params"]["width"] == 64 and records[("listed", 6)]["params"]["width"] == 32
    capsys.readouterr()
    assert cli.main(["run", str(recipe), "--out", str(out)]) == 0
    assert "nothing to do: 6 job(s) already done" in capsys.readouterr().out


def test_bad_rows_are_reported_at_their_line(tmp_path, capsys):
    recipe = write(tmp_path, """\
  - {name: table, type: generate, rows: shots.csv}
  - {name: lines, type: generate, prompt: x, rows: shots.jsonl}
  - {name: listed, type: generate, prompt: x, rows: shots.yaml}
  - {name: other, type: generate, prompt: x, rows: shots.txt}
""", shots_csv="prompt,seed,steps\na fox,1,2\n\nan owl,2,lots\n",
                   shots_jsonl='{"prompt": "ok"}\n{"prompt": "bat", "stepz": 3}\nnot json\n',
                   shots_yaml="- {prompt: a bat}\n- prompt: a moth\n  width: 30\n- name: x\n")
    capsys.readouterr()
    assert cli.main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'shots.csv'}:4: stages[0].rows[1].steps: Input should be a valid integer" in err
    assert f"{tmp_path / 'shots.jsonl'}:2: stages[1].rows[1].stepz: unknown key 'stepz' (did you mean 'steps'?)" in err
    assert f"{tmp_path / 'shots.jsonl'}:3: stages[1].rows[2]: invalid JSON" in err
    assert f"{tmp_path / 'shots.yaml'}:3: stages[2].rows[1].width: must be a multiple of 8 (got 30)" in err
    assert f"{tmp_path / 'shots.yaml'}:4: stages[2].rows[2].name: a row cannot set this" in err
    assert f"{recipe}:8: stages[3].rows: 'shots.txt': a rows table is .csv, .jsonl or .yaml" in err
    assert "Traceback" not in err
