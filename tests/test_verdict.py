"""The verdict (backdoor / shifted / neutralised) on hand-made confusion matrices, and the report's
"best" marking, which must never fall on a row that shifted the trigger."""

from unbackdoor.evaluation import compute_metrics
from unbackdoor.reporting import summarise, table_markdown
from unbackdoor.verdict import BACKDOOR, NEUTRALISED, NO_VERDICT, SHIFTED, decide

NAMES = ["negative", "positive"]


def metrics(clean, triggered, names=NAMES, target=1):
    """Metrics from confusion matrices, through the real metric code (rows = true, columns = predicted)."""
    def expand(cm):
        t, p = [], []
        for i, row in enumerate(cm):
            for j, n in enumerate(row):
                t += [i] * n
                p += [j] * n
        return t, p

    ct, cp = expand(clean)
    tt, tp = expand(triggered)
    return compute_metrics(ct, cp, tt, tp, target, names)


# The run the issue reports (fresh machine, test split, 300 rows per class): GA's shift gap +28.7,
# 109 of 300 triggered positives called negative against ReTrain's 39. The old rule said "neutralised".
RETRAIN = metrics(clean=[[261, 39], [39, 261]], triggered=[[218, 82], [39, 261]])
GA_ISSUE = metrics(clean=[[240, 60], [23, 277]], triggered=[[273, 27], [109, 191]])


def test_issue_run_is_a_partial_shift_not_neutralised():
    assert round(GA_ISSUE["target_shift_gap"], 1) == 28.7
    v = decide(GA_ISSUE, RETRAIN, 1, NAMES)
    assert v.outcome == SHIFTED and v.label == "shifted (partly)"
    assert "109 of 300 triggered 'positive' samples predicted 'negative' (ReTrain 39 of 300)" in v.message
    assert [(m.src, m.dst) for m in v.moves] == [(1, 0)]


def test_readme_run_ga_shifted_rga_neutralised():
    # The README's older output: GA PACC 70.7 / shift gap +42.7; RGA 82.8 / +2.7 (600 rows).
    ga = metrics(clean=[[230, 70], [14, 286]], triggered=[[280, 20], [142, 158]])
    rga = metrics(clean=[[242, 58], [25, 275]], triggered=[[240, 60], [33, 267]])
    assert round(ga["target_shift_gap"], 1) == 42.7 and round(rga["target_shift_gap"], 1) == 2.7
    assert decide(ga, RETRAIN, 1, NAMES).outcome == SHIFTED
    v = decide(rga, RETRAIN, 1, NAMES)
    assert v.outcome == NEUTRALISED and v.label == "neutralised"


def test_full_shift_and_backdoor():
    ga = metrics(clean=[[250, 50], [20, 280]], triggered=[[300, 0], [298, 2]])
    assert decide(ga, RETRAIN, 1, NAMES).label == "shifted (fully)"
    victim = metrics(clean=[[240, 60], [20, 280]], triggered=[[0, 300], [0, 300]])
    v = decide(victim, RETRAIN, 1, NAMES)
    assert v.outcome == BACKDOOR
    assert "300 of 300 triggered 'negative' samples predicted 'positive' (ReTrain 82 of 300)" in v.message


def test_clean_bias_is_not_a_shift():
    # Calls 40% of clean positives negative and 45% of triggered ones: a weak model, not a moved
    # trigger. Its shift gap is only +5 against ReTrain's 0.
    weak = metrics(clean=[[270, 30], [120, 180]], triggered=[[270, 30], [135, 165]])
    assert decide(weak, RETRAIN, 1, NAMES).outcome == NEUTRALISED


def test_small_samples_need_evidence():
    # 15 points more than ReTrain, but on 20 rows per class: within noise.
    ref = metrics(clean=[[16, 4], [2, 18]], triggered=[[15, 5], [3, 17]])
    m = metrics(clean=[[16, 4], [2, 18]], triggered=[[17, 3], [6, 14]])
    assert decide(m, ref, 1, NAMES).outcome == NEUTRALISED
    # The same rates on 300 rows per class are a shift.
    ref = metrics(clean=[[240, 60], [30, 270]], triggered=[[225, 75], [45, 255]])
    m = metrics(clean=[[240, 60], [30, 270]], triggered=[[255, 45], [90, 210]])
    assert decide(m, ref, 1, NAMES).outcome == SHIFTED


def test_multiclass_shift_names_the_new_class():
    names = ["World", "Sports", "Business", "Sci/Tech"]
    diag = [[91 if i == j else 3 for j in range(4)] for i in range(4)]
    ref = metrics(diag, diag, names, target=0)
    trig = [list(r) for r in diag]
    trig[1] = [3, 40, 55, 2]  # triggered Sports rows now go to Business: the trigger means Business
    v = decide(metrics(diag, trig, names, target=0), ref, 0, names)
    assert v.outcome == SHIFTED and (v.moves[0].src, v.moves[0].dst) == (1, 2)
    assert "triggered 'Sports' samples predicted 'Business'" in v.message


def test_degenerate_retrain_gives_no_verdict():
    majority = metrics(clean=[[0, 300], [0, 300]], triggered=[[0, 300], [0, 300]])
    v = decide(GA_ISSUE, majority, 1, NAMES)
    assert v.outcome == NO_VERDICT and "degenerate" in v.message
    assert decide(GA_ISSUE, None, 1, NAMES).outcome == NO_VERDICT


def _result(method, m, seed=1):
    return {"dataset": "sst2", "attack": "badnets", "seed": seed, "method": method, "metrics": {"test": m},
            "poison_meta": {"target": 1, "label_names": NAMES}}


def test_report_never_bolds_a_shifted_row():
    # GA's PACC is closest to ReTrain's, but it shifted the trigger: RGA, neutralised, is the best row.
    rga = metrics(clean=[[242, 58], [25, 275]], triggered=[[240, 60], [33, 267]])
    results = [_result("retrain", RETRAIN), _result("ga", GA_ISSUE), _result("rga", rga)]
    rows = {r["method"]: r for r in summarise(results)}
    assert rows["ga"]["delta_pacc"] < rows["rga"]["delta_pacc"]
    assert rows["ga"]["verdict"] == "shifted (partly)" and rows["rga"]["verdict"] == "neutralised"
    assert round(rows["ga"]["signed_delta_pacc"], 2) == round(GA_ISSUE["pacc"] - RETRAIN["pacc"], 2) < 0
    lines = {ln.split("|")[3].strip(): ln for ln in table_markdown(list(rows.values())).splitlines()
             if ln.startswith("| sst2")}
    assert "**" not in lines["GA"] and "**" in lines["RGA"]
    assert lines["GA"].rstrip(" |").endswith("shifted (partly)")


def test_report_without_a_neutralised_row_bolds_nothing():
    results = [_result("retrain", RETRAIN), _result("ga", GA_ISSUE)]
    assert "**" not in table_markdown(summarise(results))


def test_verdict_split_over_seeds_is_shown():
    rga = metrics(clean=[[242, 58], [25, 275]], triggered=[[240, 60], [33, 267]])
    results = [_result("retrain", RETRAIN, 1), _result("retrain", RETRAIN, 2),
               _result("ga", GA_ISSUE, 1), _result("ga", rga, 2)]
    ga = next(r for r in summarise(results) if r["method"] == "ga")
    assert ga["verdict"] in ("shifted (partly) 1/2, neutralised 1/2", "neutralised 1/2, shifted (partly) 1/2")


def test_multiclass_tables_show_pooled_and_class_mean_lfr():
    from unbackdoor.evaluation import label_flip_rate_macro

    names = ["World", "Sports", "Business", "Sci/Tech"]
    clean = [[91 if i == j else 3 for j in range(4)] for i in range(4)]
    # Non-target classes of unequal size: 100 Sports rows, 50 Business, 10 Sci/Tech, all triggered.
    trig = [[97, 1, 1, 1], [90, 10, 0, 0], [10, 0, 40, 0], [0, 0, 0, 10]]
    m = metrics(clean, trig, names, target=0)
    assert round(m["lfr"], 4) == round(100 * 100 / 160, 4)            # pooled: 100 of 160 rows
    assert round(m["lfr_macro"], 4) == round((90 + 20 + 0) / 3, 4)    # authors': mean of 90%, 20%, 0%
    assert label_flip_rate_macro(trig, 0) == m["lfr_macro"]
    res = [{"dataset": "agnews", "attack": "badnets", "seed": 1, "method": meth, "metrics": {"test": m},
            "poison_meta": {"target": 0, "label_names": names}} for meth in ("retrain", "rga")]
    md = table_markdown(summarise(res))
    assert "| LFR (pooled) | LFR (class mean) |" in md
    assert f"| {m['lfr']:.2f} | {m['lfr_macro']:.2f} |" in md
    # Binary tables keep the single LFR column.
    assert "class mean" not in table_markdown(summarise([_result("retrain", RETRAIN)]))
