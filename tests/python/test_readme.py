"""README's Python snippet ("From any language"), run as written: it is read from README.md
and executed with `coordinator_url` and `stock_url` naming a running coordinator and fake
participant, so the snippet and what it promises cannot drift apart."""

import re

from conftest import ROOT, wait_for


def readme_python_block():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### From any language"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_snippet_in_readme_creates_a_reservation(coordinator, shop):
    code = readme_python_block()
    scope = {
        "coordinator_url": coordinator._base_url,
        "stock_url": shop["stock"].url,
    }
    exec(compile(code, "README.md (From any language)", "exec"), scope)
    assert scope["created"].status_code == 202
    # 202 means the log holds the reservation; the coordinator calls the try after answering.
    tries = wait_for(
        "the coordinator's try is answered",
        lambda: [c for c in shop["stock"].calls("try") if c["status"] is not None],
    )
    assert [c["status"] for c in tries] == [201]
    assert len(shop["stock"].calls("try")) == 1
