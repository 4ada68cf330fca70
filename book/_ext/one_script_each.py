"""Sphinx extension: each page lists a script once.

sphinx-thebe (which Jupyter Book 1 always loads, thebe off or not) registers its inline configuration script
each time Sphinx reads documents, so a page can declare ``const THEBE_JS_URL`` twice: a SyntaxError in every
page's console (python -m petl.browser finds it). Keeping the first of identical entries removes it.
"""


def _one_each(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for script in context.get("script_files", []):
        # an inline script is registered with filename None or "": the same script either way
        key = (getattr(script, "filename", str(script)) or "", tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"][:] = kept   # in place: later handlers (MathJax on pages with math) add to this list


def setup(app):
    app.connect("html-page-context", _one_each, priority=100)  # before any handler that returns a template (emit_firstresult)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
