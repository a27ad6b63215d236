"""Policy files (``--policy FILE``): what a platform team writes, checked strictly."""

from __future__ import annotations

import pytest

from runvisor.protocols.policy import Policy, parse_policy


def test_a_file_sets_the_fields_it_names_and_the_others_keep_their_defaults() -> None:
    policy = parse_policy('{"max_cost_usd": 2.5, "loop_action": "pause", "no_progress_steps": 40}')
    assert (policy.max_cost_usd, policy.loop_action, policy.no_progress_steps) == (2.5, "pause", 40)
    assert policy.window == Policy().window


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('{"max_cost": 2}', "p.json: unknown field 'max_cost' (did you mean 'max_cost_usd'?)"),
        ('{"colour": 2}', "p.json: unknown field 'colour'; the fields are window,"),
        ("[1, 2]", "p.json: expected a JSON object of policy fields, got list"),
        ("max_cost_usd: 2", "p.json: not valid JSON"),
        (
            '{"window": 3, "max_cost_usd": -1}',
            "p.json: window: Input should be greater than or equal to 8; max_cost_usd:",
        ),
        ('{"loop_action": "explode"}', "p.json: loop_action: Input should be 'warn', 'pause' or 'stop'"),
    ],
)
def test_a_mistake_in_a_file_is_named(text: str, said: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_policy(text, "p.json")
    assert said in str(raised.value)
