//! What only the AWS adapter's tests need: the `[aws]` section `keyless dev` would write for the
//! emulator, and an STS client signing with what keyless serves.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // shared by several test binaries

use aws_sdk_sts::config::SharedCredentialsProvider;
use keyless_aws::{Config, Running as Provider};
use keyless_core::CachePolicy;
use keyless_emulator::Cloud;
use keyless_test_support::clients;
use keyless_test_support::context::context;
use keyless_test_support::emulator::EmulatorEnv;
use keyless_test_support::serving::{ProviderEnv, wait_ready};

/// The region of the dev configuration.
pub const REGION: &str = "eu-central-1";

/// The AWS side of the emulator's dev identity.
pub trait AwsDev {
    fn role_arn(&self) -> String;
    /// The `[aws]` section `keyless dev` would write, its authorization token in `auth-token`.
    fn config(&self) -> Config;
    /// An STS client against the emulator, signing with `credentials`.
    fn sts_client(&self, credentials: SharedCredentialsProvider) -> aws_sdk_sts::Client;
    /// The audience AWS expects on the subject token.
    fn audience(&self) -> String;
}

impl AwsDev for EmulatorEnv {
    fn role_arn(&self) -> String {
        self.emulator.identities().aws_role_arn.clone()
    }

    fn config(&self) -> Config {
        let mut config = Config::new(self.emulator.token_path(Cloud::Aws), self.role_arn());
        config.region = Some(REGION.to_owned());
        config.sts_endpoint = Some(self.emulator.url());
        config.ca_file = Some(self.ca().to_owned());
        config.session_name = Some("keyless-test".to_owned());
        config.authorization_token_file = Some(self.path("auth-token"));
        config
    }

    fn sts_client(&self, credentials: SharedCredentialsProvider) -> aws_sdk_sts::Client {
        clients::aws_sts(&self.emulator.url(), self.ca(), REGION, Some(credentials))
    }

    fn audience(&self) -> String {
        self.emulator.identities().aws_audience().to_owned()
    }
}

/// The dev configuration changed by `configure`, started on the real clock, pre-warmed, and
/// served on loopback.
pub async fn serving(configure: impl FnOnce(&mut Config)) -> ProviderEnv<Provider> {
    let config = |env: &EmulatorEnv| {
        let mut config = env.config();
        configure(&mut config);
        config
    };
    let ctx = context(CachePolicy::default());
    let h = ProviderEnv::start("aws", ctx, config, |c, ctx| async move { keyless_aws::start(c, &ctx).await }).await;
    wait_ready(&h.provider).await;
    h
}
