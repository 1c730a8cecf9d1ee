"""Drop-ins for the tools people move to procgate from; see docs/compat.md.

* ``procgate.compat.flask_shell2http``: ``Shell2HTTP`` for a Flask app, in place of
  Flask-Shell2HTTP's (the ``flask`` package is needed, as for the original).
* ``procgate.compat.subprocess_api``: ``SubprocessAPI(gate)``, a WSGI app speaking
  subprocess-api's protocol; ``[compat.subprocess_api]`` mounts it on the Gate.
"""
