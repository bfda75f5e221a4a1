"""Secrets of every shape the shim must redact, and ordinary values it must leave alone.

Shared by the redaction tests and the agent programs that plant them (``secret_program.py``,
a real AG2 conversation): each secret is a distinct string, so a dump of the database can be
searched for it (and for its first 8 characters).
"""

from __future__ import annotations

PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9PlantedPemBody"

#: name -> (the secret, a text that carries it as it shows up in agent traffic).
TEXTS: dict[str, tuple[str, str]] = {
    "openai": ("sk-proj-Zq8xW2vN5mK7pL3rT9yB1cD4fG6hJ0aS",
               "use sk-proj-Zq8xW2vN5mK7pL3rT9yB1cD4fG6hJ0aS for the call"),
    "openai_env": ("oa7Hk2Lp9Qw4Zx6Vb1Nm3Tr8", "OPENAI_API_KEY=oa7Hk2Lp9Qw4Zx6Vb1Nm3Tr8 python run.py"),
    "anthropic": ("sk-ant-api03-Xy7Kp2Lm9Qw4Zr6Vb1Nm3Tr8Hs5Jd0Fg",
                  "key: sk-ant-api03-Xy7Kp2Lm9Qw4Zr6Vb1Nm3Tr8Hs5Jd0Fg"),
    "aws_id": ("AKIAZ7QW4ER9TY2UI8OP", "aws id AKIAZ7QW4ER9TY2UI8OP in the config"),
    "aws_secret": ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq81xKq2Lm",
                   "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq81xKq2Lm"),
    "github": ("ghp_Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb3d",
               "git clone https://ghp_Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb3d@github.com/x/y"),
    "slack": ("xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUv",
              "slack token xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUv"),
    "google": ("AIzaSyD4x7Kp2Lm9Qw4Zr6Vb1Nm3Tr8Hs5Jd0Fg", "maps?key=AIzaSyD4x7Kp2Lm9Qw4Zr6Vb1Nm3Tr8Hs5Jd0Fg"),
    "huggingface": ("hf_PlantedHuggingFaceToken0123456789ab",
                    "login with hf_PlantedHuggingFaceToken0123456789ab"),
    "stripe": ("sk_live_51HqZx7Kp2Lm9Qw4Zr6Vb1Nm3", "charge with sk_live_51HqZx7Kp2Lm9Qw4Zr6Vb1Nm3"),
    "stripe_restricted": ("rk_live_51HqZx7Kp2Lm9Qw4Zr6Vb1Nm4",
                          "restricted rk_live_51HqZx7Kp2Lm9Qw4Zr6Vb1Nm4 key"),
    "jwt": ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjbWJhZ2VudCJ9.UGxhbnRlZEp3dFNpZ25hdHVyZQ",
            ("session eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjbWJhZ2VudCJ9."
             "UGxhbnRlZEp3dFNpZ25hdHVyZQ expired")),
    "pem": (PEM_BODY, f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----"),
    "basic": ("Y21iYWdlbnQ6aHVudGVyMl9wbGFudGVk",
              "curl -H 'Authorization: Basic Y21iYWdlbnQ6aHVudGVyMl9wbGFudGVk' https://x.org"),
    "bearer": ("opaqueTok3nValue9876543210abc", "Authorization: Bearer opaqueTok3nValue9876543210abc"),
    "token_scheme": ("9f8e7d6c5b4a39281706f5e4d3c2b1a0",
                     "Authorization: Token 9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
    "url": ("Pl4nted-DB-pw-77", "connect to postgresql://analyst:Pl4nted-DB-pw-77@db.example.org/cmb"),
    "password_var": ("Hunter2-planted-pw", "DB_PASSWORD=Hunter2-planted-pw ./migrate"),
    "token_var": ("at-Planted-0a1b2c3d4e5f", "ACCESS_TOKEN=at-Planted-0a1b2c3d4e5f"),
    "key_var": ("azk9Planted8Key7Value6", "AZURE_OPENAI_KEY=azk9Planted8Key7Value6"),
    "secret_var": ("cs-Planted-Secret-551", "CLIENT_SECRET=cs-Planted-Secret-551"),
    "json": ("json-Planted-Secret-9a8b", '{"client_secret": "json-Planted-Secret-9a8b", "n": 1}'),
    "yaml": ("yamlPlantedPw-3c4d", "database:\n  user: cmb\n  password: yamlPlantedPw-3c4d\n"),
    "passphrase_text": ("correct horse planted staple",
                        'passphrase = "correct horse planted staple"'),
}

#: Payload keys whose values are secrets (the value alone says nothing).
KEYS: dict[str, str] = {
    "PGPASSWORD": "pgPlantedValue-a1",
    "AWS_SECRET_ACCESS_KEY": "awsPlantedValue-b2",
    "AZURE_OPENAI_KEY": "azurePlantedValue-c3",
    "openaiApiKey": "camelPlantedValue-d4",
    "passphrase": "phrasePlantedValue-e5",
    "signing_key": "signingPlantedValue-f6",
    "api_key": "apiKeyPlantedValue-g7",
    "Authorization": "headerPlantedValue-h8",
    "x-auth-token": "xAuthPlantedValue-i9",
    "client_secret": "clientPlantedValue-j0",
}

SECRETS: list[str] = [secret for secret, _ in TEXTS.values()] + list(KEYS.values())

#: Ordinary fields and prose that must come through unchanged.
ORDINARY: dict[str, object] = {
    "prompt_tokens": 1200, "completion_tokens": 345, "total_tokens": 1545, "max_tokens": 4096,
    "token_count": 17, "tokens": ["the", "map"], "primary_key": "run_id", "sort_key": "started_at",
    "keyboard": "qwerty layout", "key": "Enter", "keys": ["a", "b"], "author": "J. Doe",
    "passed": True, "password_policy_url": "https://example.org/policy",
    "prose": ("The key idea: pass the residual map through the same mask. Token usage rose "
              "rapidly (prompt_tokens: 1200, max_tokens=4096); the capital letters mark "
              "constants. See https://example.org/docs?page=2 and the author's notes."),
    "code": "for key, value in sorted(table.items(), key=lambda kv: kv[0]):\n    print(key)",
    "usage": '{"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}',
}


def every_prefix(secrets: list[str], size: int = 8) -> list[str]:
    """Each secret and its first ``size`` characters: what must never be stored."""
    return sorted({s for secret in secrets for s in (secret, secret[:size])})
