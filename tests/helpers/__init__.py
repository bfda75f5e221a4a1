"""What the tests share: a real collector process, hand-made frames, agent programs run in
their own interpreters, the secret corpus, the scripted CMBAgent model."""
