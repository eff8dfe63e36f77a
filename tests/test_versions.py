import pytest

from dewy.versions import CalVerFormat, Constraint, Selection, newest, parse_tag


def pick(tags, **kw):
    return newest(tags, str, **kw)


def test_optional_v_and_non_semver_ignored() -> None:
    assert pick(["v1.2.3", "1.10.0", "latest", "v2", "release-3.0.0", "nightly"]) == "1.10.0"
    assert parse_tag("V1.0.0") is not None
    assert parse_tag("v1.0") is None


def test_prereleases_only_when_asked() -> None:
    tags = ["v1.2.3", "v1.3.0-rc.1"]
    assert pick(tags) == "v1.2.3"
    assert pick(tags, prerelease=True) == "v1.3.0-rc.1"
    assert pick(["v1.3.0-rc.1", "v1.3.0"], prerelease=True) == "v1.3.0"


def test_slot_selects_by_build_metadata() -> None:
    tags = ["v1.2.0+blue", "v1.3.0+green", "v1.1.0+blue", "v1.4.0"]
    assert pick(tags, slot="blue") == "v1.2.0+blue"
    assert pick(tags, slot="green") == "v1.3.0+green"
    assert pick(tags) == "v1.4.0"
    assert pick(tags, slot="red") is None


def test_nothing_eligible() -> None:
    assert pick([]) is None
    assert pick(["v1.0.0-beta"]) is None


def calver(tags, fmt="YYYY.0M.0D.MICRO", **kw):
    return Selection(calver=CalVerFormat(fmt), **kw).newest(tags, str)


def test_calver_tokens_and_ordering_as_upstream() -> None:
    assert calver(["2024.01.15.3", "2024.01.15.10", "2023.12.31.99"]) == "2024.01.15.10"
    assert calver(["2024.1.15.3", "2024.01.15.2"]) == "2024.01.15.2", "0M/0D need the zero"
    assert calver(["24.1.5", "24.1.15", "24.2.1"], "YY.MM.DD") == "24.2.1"
    assert calver(["2024.52.1", "2024.9.7"], "YYYY.WW.MICRO") == "2024.52.1"
    assert calver(["v2024.06", "2024.07"], "YYYY.0M") == "2024.07"
    assert calver(["2024.13"], "YYYY.MM") is None, "month 13 is not a month"
    with pytest.raises(ValueError, match="no specifier"):
        CalVerFormat("latest")


def test_calver_pre_release_and_slot_as_semver() -> None:
    tags = ["2024.01.15.1", "2024.01.16.0-rc.1", "2024.01.16.0-rc.2", "2024.01.14.0+blue"]
    assert calver(tags) == "2024.01.15.1"
    assert calver(tags, prerelease=True) == "2024.01.16.0-rc.2"
    assert calver(tags + ["2024.01.16.0"], prerelease=True) == "2024.01.16.0", "a release above its pre-releases"
    assert calver(tags, slot="blue") == "2024.01.14.0+blue"


def test_mixed_tags_each_scheme_ignores_the_other() -> None:
    tags = ["v1.9.0", "v2.0.0", "2024.01.15.1", "2024.02.01.0", "latest"]
    assert calver(tags) == "2024.02.01.0"
    assert pick(tags) == "v2.0.0"


@pytest.mark.parametrize("text, allowed", [
    ("~1.4", ["1.4.0", "1.4.9"]),
    ("^2", ["2.0.0", "2.9.1"]),
    (">=1.2,<2", ["1.3.9", "1.4.0", "1.4.9", "1.9.9"]),
    (">=1.2 <2", ["1.3.9", "1.4.0", "1.4.9", "1.9.9"]),
    ("^0.4", ["0.4.0"]),
    ("1.x || ^3", ["1.3.9", "1.4.0", "1.4.9", "1.9.9", "3.0.0"]),
    ("=1.9.9", ["1.9.9"]),
    (">2.0", ["2.9.1", "3.0.0"]),  # above every 2.0.x
])
def test_constraint_matches_as_semver_ranges_do(text, allowed) -> None:
    versions = ["1.3.9", "1.4.0", "1.4.9", "1.9.9", "2.0.0-rc.1", "2.0.0", "2.9.1", "3.0.0", "0.3.0", "0.4.0", "0.5.0"]
    constraint = Constraint(text)
    assert [v for v in versions if constraint.allows(parse_tag(v))] == sorted(allowed, key=versions.index)


def test_constraint_picks_the_newest_within_and_refuses_nonsense() -> None:
    tags = ["v1.4.2", "v1.5.0", "v2.0.0-rc.1", "v2.3.0"]
    assert Selection(constraint=Constraint("~1.4")).newest(tags, str) == "v1.4.2"
    assert Selection(constraint=Constraint("<2"), prerelease=True).newest(tags, str) == "v1.5.0"
    assert Selection(constraint=Constraint(">=2.0.0-rc.1"), prerelease=True).newest(tags[:3], str) == "v2.0.0-rc.1"
    for bad in ("~>=1", "one", "||"):
        with pytest.raises(ValueError, match="constraint"):
            Constraint(bad)
