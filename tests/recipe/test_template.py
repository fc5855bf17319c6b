"""slapnode:template: Jinja2 rendering with context from other sections, mode, errors."""
from __future__ import annotations

import stat

from .conftest import run_buildout, write_profile


def test_renders_context_mode_and_rerenders_on_change(tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "page.in").write_text(
        "{{ greeting }} {{ name }}, {{ cfg.colour }} {{ items | join('+') }}\n"
        "{% include 'footer.in' %}"
        "run {{ program | shquote }}\n"
        "${buildout:directory} is left to buildout\n"
    )
    (templates / "footer.in").write_text("-- footer\n")
    write_profile(tmp_path / "b", f"""
        [buildout]
        parts = page
        [cfg]
        colour = blue
        list = ["a", "b c"]
        [page]
        recipe = slapnode:template
        url = {templates}/page.in
        output = ${{buildout:directory}}/out/page.txt
        mode = 0640
        context =
            raw greeting Hello there
            key name cfg:colour
            section cfg cfg
            jsonkey items cfg:list
            raw program /opt/my prog
        """)
    run_buildout(tmp_path / "b")
    output = tmp_path / "b" / "out" / "page.txt"
    assert output.read_text() == (
        "Hello there blue, blue a+b c\n-- footer\nrun '/opt/my prog'\n${buildout:directory} is left to buildout\n"
    )
    assert stat.S_IMODE(output.stat().st_mode) == 0o640

    # the template is not part of buildout's option signature: the update path renders again
    (templates / "page.in").write_text("changed {{ name }}\n")
    run_buildout(tmp_path / "b")
    assert output.read_text() == "changed blue\n"


def test_inline_template(tmp_path):
    write_profile(tmp_path, """
        [buildout]
        parts = inline
        [inline]
        recipe = slapnode:template
        inline =
            first {{ word }}
              indented {{ 1 + 2 }}
        output = inline.txt
        context = raw word one
        """)
    run_buildout(tmp_path)
    assert (tmp_path / "inline.txt").read_text() == "first one\n  indented 3"


def test_undefined_name_is_a_clear_error(tmp_path):
    (tmp_path / "t.in").write_text("line one\n{{ missing }}\n")
    write_profile(tmp_path / "b", f"""
        [buildout]
        parts = t
        [t]
        recipe = slapnode:template
        url = {tmp_path}/t.in
        output = out.txt
        """)
    result = run_buildout(tmp_path / "b", check=False)
    assert result.returncode != 0
    assert "[t] cannot render" in result.stdout and "'missing' is undefined" in result.stdout
    assert "Traceback" not in result.stdout
    assert not (tmp_path / "b" / "out.txt").exists()


def test_url_and_inline_together_refused(tmp_path):
    write_profile(tmp_path, """
        [buildout]
        parts = t
        [t]
        recipe = slapnode:template
        url = x.in
        inline = x
        output = out.txt
        """)
    result = run_buildout(tmp_path, check=False)
    assert result.returncode != 0
    assert "[t] give exactly one of 'url' (template file) or 'inline' (template text)" in result.stdout
