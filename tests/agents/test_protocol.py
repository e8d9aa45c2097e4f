"""The orchestrator's directive protocol as pure text: parsing, validation, scheduling, votes, observations."""

from __future__ import annotations

from longcot.agents.protocol import (
    Spawn,
    extract_answer,
    format_results,
    majority,
    parse_turn,
    substitute,
    validate,
    waves,
)


def test_parse_spawns_dependencies_and_wait():
    turn = parse_turn("plan first\n[a: 7+5*2]\n[b:3*4]\n[c after a, b: {a}-{b}]\n[d: {c}*2]\n[wait]")
    assert turn.waited and not turn.problems
    assert [(s.name, s.task, s.deps) for s in turn.spawns] == [
        ("a", "7+5*2", []), ("b", "3*4", []), ("c", "{a}-{b}", ["a", "b"]), ("d", "{c}*2", ["c"])]


def test_text_after_wait_is_ignored_and_no_wait_means_final():
    assert [s.name for s in parse_turn("[a: 1+1]\n[wait]\n[b: 2]").spawns] == ["a"]
    turn = parse_turn("1+1=2\n\\boxed{2}")
    assert not turn.waited and not turn.spawns and not turn.problems


def test_malformed_and_unclosed_directives_are_reported_not_raised():
    turn = parse_turn("[a: 1+2]\n[c: 4+5\n[??]\n[b: ]\n[d: 2*3]\n[e: 9")
    assert [s.name for s in turn.spawns] == ["a", "d"]
    kinds = [p.kind for p in turn.problems]
    assert kinds == ["unclosed", "malformed", "malformed", "unclosed"]
    assert "unclosed directive '[c: 4+5 '" in turn.problems[0].message
    assert "expected '[NAME: TASK]'" in turn.problems[1].message
    assert "empty task" in turn.problems[2].message


def test_validate_unknown_dependency_duplicates_reserved_and_cap():
    spawns = parse_turn("[a: 1]\n[b after zz: 2]\n[a: 3]\n[wait: 4]\n[c after a: {a}+1]\n[d: 5]\n[e: 6]").spawns
    accepted, problems = validate(spawns, known={"old"}, cap=3)
    assert [s.name for s in accepted] == ["a", "c", "d"]
    assert [p.kind for p in problems] == ["unknown_dependency", "duplicate_name", "reserved_name", "over_cap"]
    assert "unknown sub-agent(s) zz" in problems[0].message and "at most 3" in problems[3].message
    # a dependency on an earlier round's sub-agent is fine; on a rejected spawn it is unknown
    accepted, problems = validate([Spawn("x", "{old}+1", ["old"]), Spawn("y", "{b}", ["b"])], {"old"}, cap=8)
    assert [s.name for s in accepted] == ["x"] and problems[0].kind == "unknown_dependency"


def test_waves_follow_dependencies():
    spawns = parse_turn("[a: 1]\n[b: 2]\n[c after a: {a}]\n[d after c, b: {c}]\n[e after old: {old}]").spawns
    plan = waves(spawns, resolved={"old"})
    assert [[s.name for s in w] for w in plan] == [["a", "b", "e"], ["c"], ["d"]]
    assert [[s.name for s in w] for w in waves(spawns, {"old"}, sequential=True)] == [["a"], ["b"], ["c"], ["d"],
                                                                                       ["e"]]


def test_substitute_answers_vote_and_observation():
    assert substitute("{a}*3-{b}+{x}", {"a": "12", "b": "4"}) == "12*3-4+{x}"
    assert extract_answer("7+5=12\n\\boxed{12}") == "12"
    assert extract_answer("no box\n last line ] [x\n") == "last line    x"  # cannot forge a directive
    assert extract_answer("") == ""
    assert majority(["3", "4", "4", "3", ""]) == "3"  # tie: first seen
    assert majority(["", "5", "5", "3"]) == "5" and majority(["", ""]) == ""
    assert format_results([("a", "12"), ("b", "")], []) == "\n[a = 12]\n[b = ?]\n"
