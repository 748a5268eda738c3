"""Play a trained world model in the browser beside the real world (`loopwm play RUN`).

protocol: the messages a page may send and the limits on them; session: one player's real and
imagined worlds; server: the web app (FastAPI, one WebSocket per page) and the command. Needs the
`play` extra (FastAPI and uvicorn).
"""
