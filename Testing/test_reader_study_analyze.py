"""``x2ct reader-study analyze``: simulated readers with known performance, written into a study folder made here
(or a long-format scores CSV), come back out of the analysis within its CIs; under no gain the RRRC test rejects
about 5 % of the time; malformed inputs give one line, exit 2, and no output.

Simulation (Roe & Metz 1997 style, correlated binormal): the latent score of reader j, modality t, case k is
``truth_k (mu_t + r_j + tr_tj) + c_k + tc_tk + rc_jk + e_tjk`` with independent normal effects whose non-reader
variances add to 1. A reader with separation ``mu`` has AUC ``Phi(mu / sqrt 2)``; averaged over the reader effects
(variance ``s2 = var_r + var_tr``) the population AUC is ``Phi(mu / sqrt(2 + s2))``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from x2ct.cli import main
from x2ct.readerstudy import study as st
from x2ct.readerstudy.readings import load_scores_csv
from x2ct.readerstudy.statistics import mrmc_of

CASE_VAR, TC_VAR, RC_VAR, ERROR_VAR = 0.3, 0.1, 0.2, 0.4  # add up to 1
READER_VAR, TR_VAR = 0.03, 0.02
PHI = NormalDist()


def population_auc(mu: float) -> float:
    return PHI.cdf(mu / math.sqrt(2.0 + READER_VAR + TR_VAR))


def mu_for(auc: float) -> float:
    return PHI.inv_cdf(auc) * math.sqrt(2.0 + READER_VAR + TR_VAR)


def simulate(rng: np.random.Generator, n_readers: int, n_cases: int, mus) -> tuple:
    """(truth (K,), latent scores (2, J, K)): half the cases diseased."""
    truth = (np.arange(n_cases) % 2).astype(int)
    n_t = len(mus)
    separation = (np.asarray(mus)[:, None] + rng.normal(0, math.sqrt(READER_VAR), n_readers)[None, :]
                  + rng.normal(0, math.sqrt(TR_VAR), (n_t, n_readers)))  # fmt: skip
    scores = (
        truth[None, None, :] * separation[:, :, None]
        + rng.normal(0, math.sqrt(CASE_VAR), n_cases)[None, None, :]
        + rng.normal(0, math.sqrt(TC_VAR), (n_t, 1, n_cases))
        + rng.normal(0, math.sqrt(RC_VAR), (1, n_readers, n_cases))
        + rng.normal(0, math.sqrt(ERROR_VAR), (n_t, n_readers, n_cases))
    )
    return truth, scores


def write_scores_csv(path: Path, truth, scores, modalities=("ref", "test"), calls=None) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["reader", "modality", "case", "truth", "score"] + (["call"] if calls is not None else []))
        for t, modality in enumerate(modalities):
            for j in range(scores.shape[1]):
                for k in range(truth.size):
                    extra = [int(calls[t, j, k])] if calls is not None else []
                    writer.writerow([f"R{j}", modality, f"c{k:03d}", truth[k], f"{scores[t, j, k]:.6f}", *extra])


# ---------------------------------------------------------------------------------- a whole study


AUC_XRAY, AUC_CT = 0.72, 0.86
P_TELL_APART = 0.62


def make_study(folder: Path, rng: np.random.Generator, n_readers: int = 5, n_cases: int = 120) -> dict:
    """A study folder with simulated answers; returns what was simulated."""
    cases = [f"case{k:03d}" for k in range(n_cases)]
    truth, latent = simulate(rng, n_readers, n_cases, (mu_for(AUC_XRAY), mu_for(AUC_CT)))
    mus = (mu_for(AUC_XRAY), mu_for(AUC_CT))
    (folder / "coordinator").mkdir(parents=True)
    (folder / st.STUDY_FILE).write_text(st.to_json(st.StudyDefinition(name="simulated", disease="PE")))
    items = []
    for k, case in enumerate(cases):
        items += [st.ReadingItem(f"d{k:03d}x", st.DIAGNOSIS, case, phase=st.XRAY),
                  st.ReadingItem(f"d{k:03d}c", st.DIAGNOSIS, case, phase=st.XRAY_CT, volume=f"v{k:03d}s"),
                  st.ReadingItem(f"r{k:03d}r", st.REAL_VS_SYNTHETIC, case, volume=f"v{k:03d}r"),
                  st.ReadingItem(f"r{k:03d}s", st.REAL_VS_SYNTHETIC, case, volume=f"v{k:03d}s")]  # fmt: skip
    (folder / st.ITEMS_FILE).write_text(st.to_json(items))
    key = st.StudyKey([st.CaseKey(c, int(truth[k]), f"v{k:03d}r", f"v{k:03d}s") for k, c in enumerate(cases)])
    (folder / st.KEY_FILE).write_text(st.to_json(key))
    likert = {}
    correct_tell = 0
    for j in range(n_readers):
        reader = f"reader{j}"
        for k in range(n_cases):
            for t in range(2):  # st.PHASES: xray, xray+ct
                z = latent[t, j, k] - mus[t] / 2
                answers = {st.CALL: "present" if z > 0 else "absent",
                           st.CONFIDENCE: round(100 * PHI.cdf(z / 1.5), 1)}  # fmt: skip
                st.append_answer(
                    folder, st.Answer(reader, f"d{k:03d}{'xc'[t]}", answers, 10.0 + t, "2026-01-01T00:00:00Z")
                )
            for source in "rs":
                right = rng.random() < P_TELL_APART
                correct_tell += right
                called = (
                    ("real" if source == "r" else "synthetic") if right else ("synthetic" if source == "r" else "real")
                )
                anatomy, consistency = int(rng.integers(3, 6) if source == "r" else rng.integers(1, 5)), 4
                likert.setdefault(source, []).append(anatomy)
                answers = {st.CALL: called, st.CONFIDENCE: 3, st.ANATOMY: anatomy, st.CONSISTENCY: consistency}
                st.append_answer(folder, st.Answer(reader, f"r{k:03d}{source}", answers, 7.0, "2026-01-01T00:00:00Z"))
    return {"truth": truth, "latent": latent, "mus": mus, "likert": likert, "correct_tell": correct_tell}


def test_simulated_study_recovers_the_known_aucs_accuracy_and_gain(tmp_path: Path, capsys):
    study = tmp_path / "study"
    sim = make_study(study, np.random.default_rng(20261205))
    # a superseded answer (going back was allowed): only the last line of an item counts
    st.append_answer(study, st.Answer("reader0", "d000x", {st.CALL: "absent", st.CONFIDENCE: 42.5}, 3.0, "t"))
    report = tmp_path / "report"
    assert main(["reader-study", "analyze", str(study), "-o", str(report)]) == 0
    assert "RRRC" in capsys.readouterr().out
    result = json.loads((report / "analysis.json").read_text())

    mrmc = result["mrmc"]
    assert mrmc["modalities"] == ["xray", "xray+ct"] and mrmc["n_cases"] == 120
    for entry, auc in zip(mrmc["modality_aucs"], (AUC_XRAY, AUC_CT)):
        assert entry["ci_low"] < auc < entry["ci_high"]
    rrrc = mrmc["rrrc"]
    assert rrrc["ci_low"] < AUC_CT - AUC_XRAY < rrrc["ci_high"]
    assert rrrc["ci_low"] > 0 and rrrc["p_value"] < 0.05  # the gain is large enough to be found
    assert set(mrmc["components"]) == {"ms_t", "ms_r", "ms_tr", "var_r", "var_tr", "cov1", "cov2", "cov3", "var_error"}
    assert {t["analysis"] for t in (mrmc["frrc"], mrmc["rrfc"])} == {"FRRC", "RRFC"}

    # Known accuracy of the calls: negatives are right with Phi(mu/2), positives with Phi(mu/2 / sqrt(1 + s2)).
    for row in result["calls"]:
        if row["reader"] == "pooled":
            mu = sim["mus"][st.PHASES.index(row["modality"])]
            known = (PHI.cdf(mu / 2) + PHI.cdf(mu / 2 / math.sqrt(1 + READER_VAR + TR_VAR))) / 2
            assert row["accuracy"]["ci_low"] < known < row["accuracy"]["ci_high"]
            assert row["accuracy"]["n"] == 5 * 120
    assert len([r for r in result["reader_aucs"] if r["auc"] is not None]) == 10

    mcnemar = {r["reader"]: r for r in result["mcnemar"]}
    assert set(mcnemar) == {f"reader{j}" for j in range(5)} | {"pooled"}
    assert mcnemar["pooled"]["n_pairs"] == 600
    assert mcnemar["pooled"]["c"] > mcnemar["pooled"]["b"] and mcnemar["pooled"]["p_value"] < 0.05
    assert len(result["cohen_kappa"]) == 2 * 10 and len(result["fleiss_kappa"]) == 2
    assert all(-1 <= k["kappa"] <= 1 for k in result["cohen_kappa"] + result["fleiss_kappa"])

    tell = {r["reader"]: r for r in result["real_vs_synthetic"]}["pooled"]
    assert tell["accuracy"]["successes"] == sim["correct_tell"] and tell["accuracy"]["n"] == 5 * 240
    assert tell["accuracy"]["ci_low"] < P_TELL_APART < tell["accuracy"]["ci_high"]
    assert tell["p_value_vs_chance"] < 1e-6
    likert = {(r["reader"], r["scale"], r["volume"]): r for r in result["likert"]}
    for source, volume in (("r", "real"), ("s", "synthetic")):
        row = likert[("pooled", "anatomy", volume)]
        assert row["median"] == np.median(sim["likert"][source]) and row["mean"] == pytest.approx(
            np.mean(sim["likert"][source])
        )
    assert likert[("reader0", "consistency", "synthetic")]["q25"] == 4.0
    times = {(r["reader"], r["task"]): r for r in result["reading_times"]}
    assert (
        times[("reader1", "diagnosis xray+ct")]["median_s"] == 11.0
        and times[("reader1", "real_vs_synthetic")]["n"] == 240
    )
    with open(report / "scores.csv", newline="") as fh:
        latest = [
            r for r in csv.DictReader(fh) if (r["reader"], r["modality"], r["case"]) == ("reader0", "xray", "case000")
        ]
    assert [float(r["score"]) for r in latest] == [42.5]

    for name in ("analysis.json", "scores.csv", "scores.imrmc", "report.html", "roc_xray.png", "roc_xray_ct.png",
                 "reading_times.png"):  # fmt: skip
        assert (report / name).is_file(), name
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "Obuchowski-Rockette" in page and 'src="http' not in page


def test_exports_hold_every_read_in_both_formats(tmp_path: Path):
    rng = np.random.default_rng(7)
    truth, scores = simulate(rng, 3, 20, (1.0, 1.5))
    source = tmp_path / "in.csv"
    write_scores_csv(source, truth, scores, calls=scores > 0.6)
    assert main(["reader-study", "analyze", str(source), "-o", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["reader", "modality", "case", "truth", "score"] and len(rows) == 2 * 3 * 20
    lines = (tmp_path / "out" / "scores.imrmc").read_text().splitlines()
    data = lines[lines.index("BEGIN DATA:") + 1 :]
    truth_rows = [line.split(",") for line in data if line.startswith("-1,")]
    assert sorted((c, int(v)) for _, c, m, v in truth_rows) == sorted((f"c{k:03d}", int(truth[k])) for k in range(20))
    assert {m for _, _, m, _ in truth_rows} == {"truth"}
    reads = {(r, c, m): float(s) for r, c, m, s in (line.split(",") for line in data if not line.startswith("-1,"))}
    assert reads == {(r["reader"], r["case"], r["modality"]): float(r["score"]) for r in rows}
    assert "NR: 3" in lines and "NM: 2" in lines
    result = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert result["source"] == "scores_csv" and result["reading_times"] == [] and result["mcnemar"]
    assert not (tmp_path / "out" / "reading_times.png").exists()


def test_mrmc_uses_the_cases_every_reader_read_in_both_modalities(tmp_path: Path, capsys):
    truth, scores = simulate(np.random.default_rng(2), 3, 12, (1.0, 1.0))
    source = tmp_path / "in.csv"
    write_scores_csv(source, truth, scores)
    lines = source.read_text().splitlines()
    source.write_text("\n".join(line for line in lines if not line.startswith("R1,test,c005,")) + "\n")
    result, note = mrmc_of(load_scores_csv(source))
    assert result.n_cases == 11 and note == "1 case(s) not read by every reader in both modalities left out"
    only_one = tmp_path / "one.csv"
    only_one.write_text("\n".join(line for line in lines if ",test," not in line) + "\n")
    assert main(["reader-study", "analyze", str(only_one), "-o", str(tmp_path / "out")]) == 0
    assert (
        "MRMC analysis not run: needs two modalities (reference and test); the input has ref" in capsys.readouterr().out
    )
    analysis = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert analysis["mrmc"] is None and len(analysis["reader_aucs"]) == 3 and analysis["mcnemar"] == []


def test_type_one_error_of_the_rrrc_test_is_near_five_percent(tmp_path: Path):
    """200 simulated null studies (4 readers x 60 cases, the same AUC in both modalities) through the long-format
    reader: the RRRC F test at alpha 0.05 rejects within binomial tolerance of 5 % (2-9 %)."""
    rng = np.random.default_rng(15)
    rejections = 0
    path = tmp_path / "null.csv"
    for _ in range(200):
        truth, scores = simulate(rng, 4, 60, (1.4, 1.4))
        write_scores_csv(path, truth, scores)
        result, note = mrmc_of(load_scores_csv(path))
        assert result is not None, note
        rejections += result.rrrc.p_value < 0.05
    assert 0.02 <= rejections / 200 <= 0.09


# ---------------------------------------------------------------------------------- malformed inputs


def _fails_cleanly(capsys, source: Path, report: Path, message: str) -> str:
    before = sorted(p.name for p in report.parent.iterdir())
    assert main(["reader-study", "analyze", str(source), "-o", str(report)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("x2ct: error: ") and message in err, err
    assert sorted(p.name for p in report.parent.iterdir()) == before  # nothing written, no temporaries left
    return err


@pytest.mark.parametrize(
    "text, message",
    [
        ("reader,modality,case,truth,score\nA,x,c1,2,0.5\n", "line 2: truth must be 0 or 1"),
        ("reader,modality,case,truth,score\nA,x,c1,1,high\n", "line 2: score must be a finite number"),
        ("reader,modality,case,score\nA,x,c1,0.5\n", "missing column(s) truth"),
        ("reader,modality,case,truth,score\nA,x,c1,1,3\nB,x,c1,0,4\n", "line 3: case 'c1' has truth 0"),
        ("reader,modality,case,truth,score\nA,x,c1,1,3\nA,x,c1,1,4\n", "read case 'c1' in 'x' twice"),
        ("reader,modality,case,truth,score,call\nA,x,c1,1,3,yes\n", "call must be 0, 1 or blank"),
        ("reader,modality,case,truth,score\nA,x,c1,1,3\nA,y,c1,1,3\nA,z,c1,1,3\n", "has 3 modalities"),
    ],
)
def test_malformed_scores_csv_is_one_line_and_writes_nothing(tmp_path: Path, capsys, text: str, message: str):
    source = tmp_path / "scores.csv"
    source.write_text(text)
    _fails_cleanly(capsys, source, tmp_path / "report", message)


def test_a_report_folder_that_is_not_a_report_or_holds_the_input_is_refused(tmp_path: Path, capsys):
    study = tmp_path / "study"
    make_study(study, np.random.default_rng(1), n_readers=1, n_cases=4)
    before = sorted(p.relative_to(study) for p in study.rglob("*"))
    _fails_cleanly(capsys, study, study, "would replace the input")
    _fails_cleanly(capsys, study, tmp_path, "would replace the input")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep")
    _fails_cleanly(capsys, study, tmp_path / "other", "exists and is not empty")
    assert sorted(p.relative_to(study) for p in study.rglob("*")) == before


def test_a_wrong_truth_in_the_key_is_refused(tmp_path: Path, capsys):
    study = tmp_path / "study"
    make_study(study, np.random.default_rng(1), n_readers=1, n_cases=4)
    key = study / st.KEY_FILE
    key.write_text(key.read_text().replace('"truth": 1', '"truth": 2', 1))
    assert str(key) in _fails_cleanly(capsys, study, tmp_path / "report", "truth must be 0 or 1, got 2")


def test_an_existing_report_survives_a_failed_run(tmp_path: Path, capsys):
    report = tmp_path / "report"
    report.mkdir()
    (report / "analysis.json").write_text("earlier")
    source = tmp_path / "scores.csv"
    source.write_text("reader,modality,case,truth,score\nA,x,c1,1,nan\n")
    _fails_cleanly(capsys, source, report, "score must be a finite number")
    assert [p.name for p in report.iterdir()] == ["analysis.json"] and (
        report / "analysis.json"
    ).read_text() == "earlier"


def _append(answers: Path, item_id: str, values, seconds: float = 1.0) -> None:
    """Lock one more answer of reader1 (the study folder is three levels above its answer file)."""
    st.append_answer(answers.parents[2], st.Answer("reader1", item_id, values, seconds, "2026-01-01T00:00:00Z"))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda path: path.write_bytes(b"not json\n" + path.read_bytes()), "line 1 is not a JSON answer record"),
        (
            lambda path: _append(path, "d001x", {st.CALL: "absent", st.CONFIDENCE: 150}),
            "item d001x: answer 'confidence' must be a number in 0-100, got 150",
        ),
        (
            lambda path: _append(path, "d001c", {st.CALL: "maybe", st.CONFIDENCE: 50}),
            "item d001c: answer 'call' must be 'present' or 'absent', got 'maybe'",
        ),
        (
            lambda path: _append(path, "r002s", {st.CALL: "synthetic", st.ANATOMY: 6}),
            "item r002s: answer 'anatomy' must be a number in 1-5",
        ),
        (lambda path: _append(path, "nowhere", {}), "item nowhere is not in items.json"),
        (lambda path: _append(path, "d002x", [50]), "item d002x: 'answers' must be a JSON object"),
        (
            lambda path: _append(path, "d002x", {st.CALL: "absent", st.CONFIDENCE: 5}, seconds=-1.0),
            "item d002x: reading_time_s must be a number of seconds >= 0, got -1.0",
        ),
    ],
)
def test_malformed_answer_file_is_one_line_and_writes_nothing(tmp_path: Path, capsys, damage, message):
    study = tmp_path / "study"
    make_study(study, np.random.default_rng(1), n_readers=2, n_cases=8)
    answers = st.reader_dir(study, "reader1") / st.ANSWERS_FILE
    damage(answers)
    assert str(answers) in _fails_cleanly(capsys, study, tmp_path / "report", message)


def test_a_study_without_answers_is_refused(tmp_path: Path, capsys):
    study = tmp_path / "study"
    make_study(study, np.random.default_rng(1), n_readers=1, n_cases=4)
    for path in (study / st.READERS_DIR).rglob(st.ANSWERS_FILE):
        path.unlink()
    _fails_cleanly(capsys, study, tmp_path / "report", "no reader has locked an answer yet")
