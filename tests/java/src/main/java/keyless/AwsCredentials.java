package keyless;

import java.util.LinkedHashMap;
import java.util.Map;
import software.amazon.awssdk.auth.credentials.AwsSessionCredentials;
import software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider;

/**
 * The AWS SDK for Java v2, unmodified: DefaultCredentialsProvider resolves credentials from the
 * environment keyless dev writes (the container provider when AWS_CONTAINER_CREDENTIALS_FULL_URI is
 * set, with the token from AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE; else the instance profile over
 * IMDSv2 at AWS_EC2_METADATA_SERVICE_ENDPOINT). Prints them as JSON; the test proves them with a
 * SigV4-signed GetCallerIdentity against the emulator.
 */
public final class AwsCredentials {
    private AwsCredentials() {}

    public static void main(String[] args) {
        try (DefaultCredentialsProvider provider = DefaultCredentialsProvider.builder().build()) {
            AwsSessionCredentials session = (AwsSessionCredentials) provider.resolveCredentials();
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("access_key_id", session.accessKeyId());
            out.put("secret_access_key", session.secretAccessKey());
            out.put("session_token", session.sessionToken());
            out.put("expiration", session.expirationTime().map(Object::toString).orElse(""));
            out.put("provider", session.providerName().orElse(""));
            Json.print(out);
        }
    }
}
