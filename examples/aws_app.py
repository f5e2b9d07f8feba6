"""An unmodified boto3 app: asks AWS STS who it is.

Configured only by the environment, like any app next to keyless: botocore finds the credentials
through AWS_CONTAINER_CREDENTIALS_FULL_URI (+ AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE) or
AWS_EC2_METADATA_SERVICE_ENDPOINT, the region in AWS_DEFAULT_REGION, and, against the emulator, STS
in AWS_ENDPOINT_URL_STS with its CA in AWS_CA_BUNDLE. GetCallerIdentity is signed with SigV4 using
the served keys, so a success proves the credentials are real (the emulator verifies the signature).

Optional: KEYLESS_DEV_AWS_ROLE_ARN, the role the credentials must belong to.
"""

import os
import sys

import boto3


def main() -> int:
    session = boto3.Session()
    credentials = session.get_credentials()
    if credentials is None:
        print("aws: no credentials found: is keyless running and the app's env set?", file=sys.stderr)
        return 1
    arn = session.client("sts").get_caller_identity()["Arn"]
    print(f"aws: {arn} (credentials from {credentials.method})")
    expected = os.environ.get("KEYLESS_DEV_AWS_ROLE_ARN")
    if expected:
        # arn:aws:iam::ACCOUNT:role/NAME becomes arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION.
        account, role = expected.split(":")[4], expected.rsplit("/", 1)[-1]
        if not arn.startswith(f"arn:aws:sts::{account}:assumed-role/{role}/"):
            print(f"aws: expected a session of {expected}, got {arn}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
