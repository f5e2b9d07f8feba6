package keyless;

import com.azure.core.credential.AccessToken;
import com.azure.core.credential.TokenCredential;
import com.azure.core.credential.TokenRequestContext;
import com.azure.identity.DefaultAzureCredentialBuilder;
import com.azure.identity.ManagedIdentityCredentialBuilder;
import java.time.Duration;
import java.time.OffsetDateTime;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * azure-identity for Java (MSAL4J's managed identity), unmodified: ManagedIdentityCredential or
 * DefaultAzureCredential ("managed" or "default", the first argument) gets a token for the scope
 * given as the second, on App Service (IDENTITY_ENDPOINT + IDENTITY_HEADER) or IMDS
 * (AZURE_POD_IDENTITY_AUTHORITY_HOST). Prints it as JSON; the test verifies it against the
 * emulator's Entra keys.
 */
public final class AzureCredentials {
    private AzureCredentials() {}

    public static void main(String[] args) {
        String which = args[0];
        String scope = args[1];
        TokenCredential credential = "default".equals(which)
            ? new DefaultAzureCredentialBuilder().build()
            : new ManagedIdentityCredentialBuilder().build();
        AccessToken token = credential.getTokenSync(new TokenRequestContext().addScopes(scope));
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("token", token.getToken());
        out.put("left_s", Duration.between(OffsetDateTime.now(), token.getExpiresAt()).toSeconds());
        Json.print(out);
        System.exit(0); // azure-core's non-daemon threads would keep the JVM up
    }
}
