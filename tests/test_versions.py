from dewy.versions import newest, parse_tag


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
