//! The real `aws-sdk-sts` client against the emulator: the wire format is what the SDK parses,
//! and GetCallerIdentity accepts the SDK's own SigV4 signature.

#![allow(clippy::unwrap_used)]

use aws_sdk_sts::config::{Credentials, SharedCredentialsProvider};
use keyless_emulator::Cloud;
use keyless_test_support::clients;
use keyless_test_support::clock::wall_clock;
use keyless_test_support::emulator::EmulatorEnv;

fn sdk_client(env: &EmulatorEnv, credentials: Option<Credentials>) -> aws_sdk_sts::Client {
    let credentials = credentials.map(SharedCredentialsProvider::new);
    clients::aws_sts(&env.emulator.url(), env.ca(), "eu-west-1", credentials)
}

#[tokio::test]
async fn aws_sdk_assumes_the_role_and_its_credentials_pass_get_caller_identity() {
    let env = EmulatorEnv::start().await;
    let output = sdk_client(&env, None)
        .assume_role_with_web_identity()
        .role_arn("arn:aws:iam::123456789012:role/keyless-dev")
        .role_session_name("sdk")
        .web_identity_token(env.projected(Cloud::Aws))
        .send()
        .await
        .unwrap();
    assert_eq!(output.subject_from_web_identity_token(), Some("system:serviceaccount:default:keyless-dev"));
    assert_eq!(output.audience(), Some("sts.amazonaws.com"));
    let user = output.assumed_role_user().unwrap();
    assert_eq!(user.arn(), "arn:aws:sts::123456789012:assumed-role/keyless-dev/sdk");
    let issued = output.credentials().unwrap();
    let expiry = issued.expiration().secs() - aws_smithy_types::DateTime::from(wall_clock()).secs();
    assert!((3590..=3600).contains(&expiry), "{expiry}");

    let credentials = Credentials::new(
        issued.access_key_id(),
        issued.secret_access_key(),
        Some(issued.session_token().to_owned()),
        None,
        "emulator",
    );
    let identity = sdk_client(&env, Some(credentials)).get_caller_identity().send().await.unwrap();
    assert_eq!(identity.arn(), Some("arn:aws:sts::123456789012:assumed-role/keyless-dev/sdk"));
    assert_eq!(identity.account(), Some("123456789012"));
}

#[tokio::test]
async fn aws_sdk_surfaces_the_error_codes_it_classifies() {
    let env = EmulatorEnv::start().await;
    let expired = env.mint("sts.amazonaws.com", |c| c.exp_offset_secs = -10);
    let error = sdk_client(&env, None)
        .assume_role_with_web_identity()
        .role_arn("arn:aws:iam::123456789012:role/keyless-dev")
        .role_session_name("sdk")
        .web_identity_token(expired)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(error.is_expired_token_exception(), "{error:?}");

    let intruder = env.mint("sts.amazonaws.com", |c| c.sub = Some("system:serviceaccount:x:y".into()));
    let error = sdk_client(&env, None)
        .assume_role_with_web_identity()
        .role_arn("arn:aws:iam::123456789012:role/keyless-dev")
        .role_session_name("sdk")
        .web_identity_token(intruder)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(aws_sdk_sts::error::ProvideErrorMetadata::code(&error), Some("AccessDenied"), "{error:?}");
}
