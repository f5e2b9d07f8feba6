package keyless;

import com.azure.core.credential.TokenRequestContext;
import com.azure.identity.DefaultAzureCredentialBuilder;
import com.google.auth.oauth2.GoogleCredentials;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import software.amazon.awssdk.auth.credentials.AwsSessionCredentials;
import software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider;

/**
 * The three clouds' default credentials in one JVM, unmodified, as a program `keyless exec` runs
 * gets them: the AWS SDK for Java v2's DefaultCredentialsProvider (with the sts module, so web
 * identity is in its chain), google-auth-library-java's application-default credentials,
 * azure-identity's DefaultAzureCredential. Prints each cloud's credential as JSON ("error: ..."
 * for a cloud that failed); the test proves whose it is with the emulator (GetCallerIdentity,
 * tokeninfo, the Entra token's appid).
 */
public final class Credentials {
    private Credentials() {}

    public static void main(String[] args) {
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("aws", attempt(() -> {
            try (DefaultCredentialsProvider provider = DefaultCredentialsProvider.builder().build()) {
                software.amazon.awssdk.auth.credentials.AwsCredentials keys = provider.resolveCredentials();
                Map<String, Object> aws = new LinkedHashMap<>();
                aws.put("access_key_id", keys.accessKeyId());
                aws.put("secret_access_key", keys.secretAccessKey());
                aws.put("session_token", keys instanceof AwsSessionCredentials s ? s.sessionToken() : "");
                return aws;
            }
        }));
        out.put("gcp", attempt(() -> {
            GoogleCredentials credentials = GoogleCredentials.getApplicationDefault()
                .createScoped(List.of("https://www.googleapis.com/auth/cloud-platform"));
            credentials.refresh();
            return credentials.getAccessToken().getTokenValue();
        }));
        out.put("azure", attempt(() -> new DefaultAzureCredentialBuilder().build()
            .getTokenSync(new TokenRequestContext().addScopes("https://management.azure.com/.default"))
            .getToken()));
        Json.print(out);
        System.exit(0); // azure-core's non-daemon threads would keep the JVM up
    }

    private static Object attempt(Callable<Object> get) {
        try {
            return get.call();
        } catch (Exception e) {
            String text = "error: " + e;
            return text.substring(0, Math.min(text.length(), 300));
        }
    }
}
