"""``ask``: from a question to ranked findings with evidence.

``engine`` finds the knowledge-base entries, attaches what is installed,
collects events and evaluates the rules; ``result`` is the answer's shape
(``specs/ask.schema.json``). The public entry points are
:func:`jalki_core.ask` / :func:`jalki_core.ask_async`.
"""
