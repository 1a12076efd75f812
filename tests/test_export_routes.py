"""Route rules and channel groups (``drmgf.export.routes``, ``drmgf.export.groups``, ``union_routes``):
hand-made scores with known answers, the residual groups of a real ResNet, and ``drmgf routes`` on
one tiny DR-MGF run and one tiny equal-weights run."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from drmgf.config import TrainConfig
from drmgf.data import shapes
from drmgf.errors import ConfigError
from drmgf.export.groups import ChannelGroup, channel_groups
from drmgf.export.prune import union_routes
from drmgf.export.routes import SCHEMA, RouteRule, keep_dominant, keep_threshold, keep_top, overlap, select
from drmgf.export.routes_run import routes_for_run
from drmgf.export.tasknet import copy_with_names, task_nets
from drmgf.methods.sharing import probe_sharing
from drmgf.models import build_model
from drmgf.train import fit
from tests.helpers import assert_one_line_error, run_cli


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# --- rules on hand-made scores ---------------------------------------------------------------------

def test_threshold_keeps_scores_at_or_above_tau_times_max() -> None:
    assert keep_threshold(t(1.0, 0.5, 0.09, 0.1), 0.1) == [0, 1, 3]
    assert keep_threshold(t(4.0, 1.0, 2.0), 0.5) == [0, 2]


def test_threshold_tau_one_keeps_every_tied_maximum() -> None:
    assert keep_threshold(t(2.0, 1.0, 2.0, 1.999), 1.0) == [0, 2]


def test_threshold_with_all_zero_scores_keeps_everything() -> None:
    assert keep_threshold(torch.zeros(5), 0.5) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("ratio", "filters", "count"), [
    (0.5, 5, 3), (0.5, 4, 2), (0.3, 10, 3), (0.7, 10, 7), (0.01, 8, 1), (1.0, 6, 6), (0.34, 3, 2),
])
def test_keep_ratio_rounds_up_and_never_overshoots_exact_products(ratio: float, filters: int, count: int) -> None:
    # 0.3 * 10 and 0.7 * 10 are 3.0000000000000004 and 7.000000000000001 in floating point
    kept = keep_top(torch.arange(filters, dtype=torch.float32), ratio)
    assert kept == list(range(filters - count, filters))


def test_keep_ratio_keeps_the_highest_scores_sorted_and_breaks_ties_by_lower_index() -> None:
    assert keep_top(t(0.1, 0.9, 0.5, 0.7), 0.5) == [1, 3]
    assert keep_top(t(1.0, 1.0, 1.0, 1.0), 0.5) == [0, 1]
    assert keep_top(t(0.0, 2.0, 1.0, 2.0, 2.0), 0.4) == [1, 3]


def test_dominance_keeps_filters_no_other_task_beats_by_the_margin() -> None:
    shares = torch.tensor([[0.50, 0.20, 0.36, 0.10],
                           [0.40, 0.60, 0.30, 0.45],
                           [0.10, 0.20, 0.34, 0.45]])
    assert keep_dominant(shares, 0, 1.1) == [0, 2]  # filter 2: 0.34 <= 1.1 * 0.36
    assert keep_dominant(shares, 1, 1.0) == [1, 3]  # filter 3: a tie at margin 1 is kept
    assert keep_dominant(shares, 2, 1.1) == [2, 3]  # filter 2: 0.36 <= 1.1 * 0.34, not with margin 1
    assert keep_dominant(shares, 2, 1.0) == [3]
    assert keep_dominant(shares, 0, 10.0) == [0, 1, 2, 3]


def test_dominance_of_a_single_task_keeps_everything() -> None:
    assert keep_dominant(t(0.0, 1.0, 0.0)[None], 0, 1.1) == [0, 1, 2]


@pytest.mark.parametrize("rule", [RouteRule(rule="threshold", tau=1.0), RouteRule(rule="keep-ratio", keep_ratio=0.01),
                                  RouteRule(rule="dominance", margin=1.0)])
def test_select_never_returns_an_empty_set_for_all_zero_scores(rule: RouteRule) -> None:
    kept = select(rule, torch.zeros(6), torch.zeros(2, 6), 0)
    assert kept and sorted(set(kept)) == kept and all(0 <= k < 6 for k in kept)


def test_select_falls_back_to_the_best_filter_when_every_filter_is_won_by_others() -> None:
    shares = torch.tensor([[0.1, 0.2, 0.1], [0.9, 0.8, 0.9]])
    assert keep_dominant(shares, 0, 1.1) == []
    assert select(RouteRule(rule="dominance"), t(0.3, 0.7, 0.5), shares, 0) == [1]


def test_select_never_empty_on_random_scores() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        scores = torch.rand(7, generator=gen) * (torch.rand(7, generator=gen) > 0.7)
        shares = torch.softmax(torch.randn(3, 7, generator=gen) * 5, dim=0)
        for rule in (RouteRule(rule="threshold", tau=1.0), RouteRule(rule="keep-ratio", keep_ratio=0.1),
                     RouteRule(rule="dominance", margin=1.0)):
            assert select(rule, scores, shares, 1)


@pytest.mark.parametrize(("rule", "flag"), [
    (RouteRule(tau=0.0), "--tau"), (RouteRule(tau=1.5), "--tau"), (RouteRule(keep_ratio=0.0), "--keep-ratio"),
    (RouteRule(keep_ratio=1.01), "--keep-ratio"), (RouteRule(margin=0.9), "--margin"),
    (RouteRule(rule="best"), "--rule"),
    (RouteRule(score="random"), "--score"), (RouteRule(rule="dominance", score="magnitude"), "--rule dominance"),
])
def test_invalid_rules_are_config_errors_naming_the_flag(rule: RouteRule, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag) as info:
        rule.validate()
    assert "\n" not in str(info.value)


def test_overlap_is_the_jaccard_index_over_common_layers() -> None:
    routes = {"a": {"layers": {"l1": {"kept": [0, 1]}, "l2": {"kept": [0]}}},
              "b": {"layers": {"l1": {"kept": [1, 2]}, "l3": {"kept": [5]}}}}
    assert overlap(routes) == {"a|b": pytest.approx(1 / 3)}
    assert math.isnan(overlap({"a": {"layers": {"x": {"kept": []}}}, "b": {"layers": {"y": {"kept": [0]}}}})["a|b"])


# --- channel groups ----------------------------------------------------------------------------------

def test_group_keeps_the_union_of_its_members_positions() -> None:
    group = ChannelGroup(size=4, members={"a": [0, 1, 2, 3], "b": [3, 2, 1, 0]}, roots=["a"])
    assert group.kept_positions({"a": [0], "b": [0]}) == [0, 3]
    assert group.kept_positions({"a": [1, 2], "b": [1]}) == [1, 2]


def test_group_with_a_member_outside_the_route_or_a_locked_group_keeps_everything() -> None:
    group = ChannelGroup(size=3, members={"a": [0, 1, 2], "private": [0, 1, 2]}, roots=["a"])
    assert group.kept_positions({"a": [0]}) == [0, 1, 2]
    locked = ChannelGroup(size=3, members={"a": [0, 1, 2]}, roots=["a"], locked=True)
    assert locked.kept_positions({"a": [1]}) == [0, 1, 2]


def test_union_routes_gives_every_route_member_the_group_union() -> None:
    residual = ChannelGroup(size=4, members={"stem": [0, 1, 2, 3], "b0.conv2": [0, 1, 2, 3]}, roots=["stem"])
    single = ChannelGroup(size=3, members={"b0.conv1": [0, 1, 2]}, roots=["b0.conv1"])
    mixed = ChannelGroup(size=2, members={"shared": [0, 1], "private": [0, 1]}, roots=["shared"])
    final = union_routes([residual, single, mixed], {"stem": [0], "b0.conv2": [3], "b0.conv1": [1], "shared": [1]})
    assert final == {"stem": [0, 3], "b0.conv2": [0, 3], "b0.conv1": [1], "shared": [0, 1]}


def test_align_rounds_each_group_up_with_its_best_remaining_filters() -> None:
    residual = ChannelGroup(size=8, members={"a": list(range(8)), "b": [7, 6, 5, 4, 3, 2, 1, 0]}, roots=["a"])
    small = ChannelGroup(size=3, members={"c": [0, 1, 2]}, roots=["c"])
    scores = {"a": torch.tensor([9.0, 1, 1, 1, 1, 1, 5, 1]), "b": torch.tensor([1.0, 1, 1, 1, 1, 1, 1, 8]),
              "c": torch.tensor([1.0, 2, 3])}
    # a keeps 0, b keeps its 7 (= position 0): union {0}; align 4 adds position 6 (a:5) then by merit/index
    final = union_routes([residual, small], {"a": [0], "b": [7], "c": [2]}, scores, align=4)
    assert len(final["a"]) == 4 and {0, 6} <= set(final["a"])
    assert final["b"] == sorted(7 - p for p in final["a"])  # still one group
    assert final["c"] == [0, 1, 2]  # capped at the group size
    assert union_routes([residual], {"a": [0, 1, 2, 3], "b": [7]}, scores, align=4)["a"] == [0, 1, 2, 3]


def _groups_of(model: torch.nn.Module, task: str) -> list[ChannelGroup]:
    x = torch.randn(2, 3, 32, 32)
    nets = task_nets(model, probe_sharing(model, [s.name for s in model.tasks], x))
    module, names = copy_with_names(nets[task])
    return channel_groups(module, x[:1], names, nets[task].couplings)


def test_resnet_residual_groups_tie_the_stem_every_conv2_and_the_shortcut_of_a_stage() -> None:
    torch.manual_seed(0)
    model = build_model("mt_resnet", shapes.TASKS, 3, width=4, depth=20).eval()
    groups = {frozenset(g.members): g for g in _groups_of(model, "shape")}
    stage1 = frozenset({"trunk.0.0", "trunk.1.conv2", "trunk.2.conv2", "trunk.3.conv2"})
    stage2 = frozenset({"trunk.4.conv2", "trunk.4.shortcut.0", "trunk.5.conv2", "trunk.6.conv2"})
    stage3 = frozenset({"trunk.7.conv2", "trunk.7.shortcut.0", "trunk.8.conv2", "trunk.9.conv2"})
    assert {stage1, stage2, stage3} <= set(groups)
    assert [groups[s].size for s in (stage1, stage2, stage3)] == [4, 8, 16]
    for s in (stage1, stage2, stage3):  # a residual add ties channel c to channel c
        assert all(ch == list(range(groups[s].size)) for ch in groups[s].members.values())
        assert not groups[s].locked
    singles = [g for g in groups.values() if len(g.members) == 1]
    assert {next(iter(g.members)) for g in singles} == {f"trunk.{b}.conv1" for b in range(1, 10)}
    assert sum(len(g.members) for g in groups.values()) == 1 + 9 * 2 + 2  # every conv exactly once


def test_exit_head_convs_form_their_own_group_and_union_spans_the_residual_group() -> None:
    torch.manual_seed(0)
    model = build_model("resnet_sdn", (shapes.TASKS[0],), 3, width=4).eval()
    groups = _groups_of(model, "exit0")
    members = [set(g.members) for g in groups]
    assert {"stem.0", "blocks.0.conv2"} in members and {"exits.0.features.0"} in members
    final = union_routes(groups, {"stem.0": [1], "blocks.0.conv1": [2], "blocks.0.conv2": [3]})
    assert final == {"stem.0": [1, 3], "blocks.0.conv1": [2], "blocks.0.conv2": [1, 3]}


# --- routes of a trained run ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def drmgf_run(tmp_path_factory: pytest.TempPathFactory, tiny_config: Callable[..., TrainConfig]) -> Path:
    """A 1-epoch DR-MGF resnet_sdn run (3 exits, width 4) on 64/32 ``shapes`` images. Read only."""
    out = tmp_path_factory.mktemp("routes") / "drmgf"
    fit(tiny_config(out, data={"limit_train": 64, "limit_test": 32}, method={"method": "drmgf", "period_steps": 2}))
    return out


@pytest.fixture(scope="module")
def ew_run(tmp_path_factory: pytest.TempPathFactory, tiny_config: Callable[..., TrainConfig]) -> Path:
    """A 1-epoch equal-weights run (no learned importance). Read only."""
    out = tmp_path_factory.mktemp("routes") / "ew"
    fit(tiny_config(out, method={"method": "ew"}))
    return out


def check_document(doc: dict, run: Path) -> None:
    """routes.json schema: every task, every layer's kept filters sorted, unique, in range, group-consistent."""
    assert doc["schema"] == SCHEMA and doc["run"] == str(run) and doc["input_shape"] == [3, 32, 32]
    assert set(doc) == {"schema", "run", "checkpoint", "epoch", "method", "input_shape", "rule", "tasks", "overlap"}
    assert list(doc["tasks"]) == ["exit0", "exit1", "exit2"]
    assert set(doc["overlap"]) == {"exit0|exit1", "exit0|exit2", "exit1|exit2"}
    for route in doc["tasks"].values():
        assert set(route) == {"layers", "macs_dense", "macs_kept", "params_dense", "params_kept"}
        assert 0 < route["macs_kept"] <= route["macs_dense"] and 0 < route["params_kept"] <= route["params_dense"]
        for entry in route["layers"].values():
            kept = entry["kept"]
            assert kept and kept == sorted(set(kept)) and 0 <= kept[0] and kept[-1] < entry["filters"]
            assert 1 <= entry["selected"] <= len(kept)
            assert entry["score"]["min"] <= entry["score"]["mean"] <= entry["score"]["max"]
        layers = route["layers"]
        assert layers["stem.0"]["kept"] == layers["blocks.0.conv2"]["kept"]  # one residual group
    assert list(doc["tasks"]["exit0"]["layers"]) == ["stem.0", "blocks.0.conv1", "blocks.0.conv2"]
    exit1 = doc["tasks"]["exit1"]["layers"]
    assert exit1["blocks.1.conv2"]["kept"] == exit1["blocks.1.shortcut.0"]["kept"]
    assert "blocks.2.conv1" not in doc["tasks"]["exit2"]["layers"]  # only the last exit reaches block 2


def test_keep_ratio_routes_of_a_drmgf_run(drmgf_run: Path, tmp_path: Path) -> None:
    doc = routes_for_run(drmgf_run, RouteRule(rule="keep-ratio", keep_ratio=0.5), out=tmp_path / "r.json", plot=False)
    check_document(doc, drmgf_run)
    assert json.loads((tmp_path / "r.json").read_text()) == doc
    assert doc["rule"] == {"rule": "keep-ratio", "tau": 0.1, "keep_ratio": 0.5, "margin": 1.1, "score": "importance",
                           "align": 1}
    for route in doc["tasks"].values():
        for entry in route["layers"].values():
            assert entry["selected"] == math.ceil(0.5 * entry["filters"])


def test_threshold_tau_one_and_dominance_routes_of_a_drmgf_run(drmgf_run: Path, tmp_path: Path) -> None:
    strict = routes_for_run(drmgf_run, RouteRule(rule="threshold", tau=1.0), out=tmp_path / "t.json", plot=False)
    check_document(strict, drmgf_run)
    assert all(e["selected"] >= 1 for r in strict["tasks"].values() for e in r["layers"].values())
    dom = routes_for_run(drmgf_run, RouteRule(rule="dominance", margin=1.1), out=tmp_path / "d.json", plot=False)
    check_document(dom, drmgf_run)


def test_magnitude_scores_work_on_an_ew_run_and_importance_is_a_config_error(ew_run: Path, tmp_path: Path) -> None:
    doc = routes_for_run(ew_run, RouteRule(rule="keep-ratio", keep_ratio=0.5, score="magnitude"),
                         out=tmp_path / "m.json", plot=False)
    check_document(doc, ew_run)
    assert doc["method"] == "ew"
    with pytest.raises(ConfigError, match="--score magnitude"):
        routes_for_run(ew_run, RouteRule(rule="threshold"), out=tmp_path / "i.json", plot=False)
    assert not (tmp_path / "i.json").exists()


def test_cli_routes_prints_a_table_per_task_and_writes_json_and_png(drmgf_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.json"
    code, stdout, stderr = run_cli(["routes", str(drmgf_run), "--rule", "keep-ratio", "--keep-ratio", "0.5",
                                    "--out", str(out)])
    assert code == 0, stderr
    doc = json.loads(out.read_text())
    check_document(doc, drmgf_run)
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for task, route in doc["tasks"].items():
        assert f"task {task}: MACs {route['macs_kept']:,} of {route['macs_dense']:,}" in stdout
    assert stdout.count("layer") >= 3 and "kept  chosen" in stdout and "blocks.0.conv1" in stdout
    assert "route overlap (Jaccard): exit0/exit1" in stdout and f"routes saved in {out} (and .png)" in stdout


def test_cli_routes_errors_are_one_line(drmgf_run: Path, ew_run: Path, tmp_path: Path) -> None:
    code, _, err = run_cli(["routes", str(ew_run), "--out", str(tmp_path / "x.json"), "--no-plot"])
    assert code == 2 and "--score magnitude" in err
    assert_one_line_error(err, "routes")
    code, _, err = run_cli(["routes", str(drmgf_run), "--tau", "1.5", "--out", str(tmp_path / "y.json")])
    assert code == 2 and "--tau must be in (0, 1], got 1.5" in err
    assert_one_line_error(err, "routes")
    code, _, err = run_cli(["routes", str(tmp_path / "nowhere")])
    assert code == 1 and "no config.json" in err
    assert_one_line_error(err, "routes")
    assert not list(tmp_path.glob("*.json"))
