"""An unmodified google-auth app: gets an access token and an ID token from the metadata server.

Configured only by the environment: google-auth finds the metadata server through
GCE_METADATA_HOST / GCE_METADATA_IP (keyless serves it on 127.0.0.1) and the project in
GOOGLE_CLOUD_PROJECT. The access token is checked with Google's tokeninfo endpoint, the ID token's
signature with Google's certificates; against the emulator both live at KEYLESS_DEV_EMULATOR_URL
(trusted through REQUESTS_CA_BUNDLE).

Optional: KEYLESS_DEV_GCP_SERVICE_ACCOUNT, the service account the token must belong to.
"""

import os
import sys

import google.auth
import google.auth.transport.requests
import google.oauth2.id_token
import requests

AUDIENCE = "https://example.com/keyless-example"


def main() -> int:
    emulator = os.environ.get("KEYLESS_DEV_EMULATOR_URL")
    tokeninfo_url = f"{emulator}/tokeninfo" if emulator else "https://oauth2.googleapis.com/tokeninfo"
    certs_url = f"{emulator}/oauth2/v3/certs" if emulator else "https://www.googleapis.com/oauth2/v3/certs"

    credentials, project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    request = google.auth.transport.requests.Request()
    credentials.refresh(request)
    info = requests.get(tokeninfo_url, params={"access_token": credentials.token}, timeout=10)
    if info.status_code != 200:
        print(f"gcp: tokeninfo rejected the access token: {info.status_code} {info.text}", file=sys.stderr)
        return 1
    email = info.json().get("email", "(federated principal)")
    print(f"gcp: access token for {email} in project {project}, expires in {info.json()['expires_in']}s")

    id_token = google.oauth2.id_token.fetch_id_token(request, AUDIENCE)
    claims = google.oauth2.id_token.verify_token(id_token, request, audience=AUDIENCE, certs_url=certs_url)
    print(f"gcp: ID token for {claims.get('email', claims['sub'])}, audience {claims['aud']}, signature verified")

    expected = os.environ.get("KEYLESS_DEV_GCP_SERVICE_ACCOUNT")
    if expected and (email != expected or claims.get("email") != expected):
        print(f"gcp: expected tokens of {expected}, got {email} / {claims.get('email')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
