"""An unmodified azure-identity app: gets an Azure Resource Manager token and verifies it.

Configured only by the environment: DefaultAzureCredential finds the managed-identity endpoint that
keyless serves on 127.0.0.1 through AZURE_POD_IDENTITY_AUTHORITY_HOST (IMDS) or IDENTITY_ENDPOINT +
IDENTITY_HEADER (App Service). The token's signature is checked against Entra ID's published keys;
against the emulator they live at KEYLESS_DEV_EMULATOR_URL (trusted through REQUESTS_CA_BUNDLE).

Optional: KEYLESS_DEV_AZURE_TENANT_ID and KEYLESS_DEV_AZURE_CLIENT_ID, the identity the token must carry.
"""

import os
import sys

import jwt
import requests
from azure.identity import DefaultAzureCredential

RESOURCE = "https://management.azure.com"


def main() -> int:
    token = DefaultAzureCredential().get_token(f"{RESOURCE}/.default").token

    unverified = jwt.decode(token, options={"verify_signature": False})
    tenant = unverified["tid"]
    authority = os.environ.get("KEYLESS_DEV_EMULATOR_URL", "https://login.microsoftonline.com")
    keys = requests.get(f"{authority}/{tenant}/discovery/v2.0/keys", timeout=10)
    keys.raise_for_status()
    kid = jwt.get_unverified_header(token)["kid"]
    key = next((k for k in jwt.PyJWKSet.from_dict(keys.json()).keys if k.key_id == kid), None)
    if key is None:
        print(f"azure: no published key has the token's kid {kid}", file=sys.stderr)
        return 1
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=[RESOURCE, f"{RESOURCE}/"])
    print(f"azure: token for app {claims['appid']} in tenant {claims['tid']}, audience {claims['aud']}, signature verified")

    for claim, variable in (("tid", "KEYLESS_DEV_AZURE_TENANT_ID"), ("appid", "KEYLESS_DEV_AZURE_CLIENT_ID")):
        expected = os.environ.get(variable)
        if expected and claims[claim] != expected:
            print(f"azure: expected {claim} {expected}, got {claims[claim]}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
