"""The applicant's web pages on the public onion (Russian first, English second).

Server-rendered with Jinja2, no external resources, no inline script or style.
Without JavaScript the server seals a submission in memory for that one request
(:mod:`.sealing`); an operator can switch that path off.
"""
