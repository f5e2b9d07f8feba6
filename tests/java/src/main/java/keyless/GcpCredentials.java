package keyless;

import com.google.auth.oauth2.ComputeEngineCredentials;
import com.google.auth.oauth2.GoogleCredentials;
import com.google.auth.oauth2.IdTokenCredentials;
import com.google.auth.oauth2.IdTokenProvider;
import java.io.IOException;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * google-auth-library-java, unmodified: GoogleCredentials.getApplicationDefault() detects the
 * metadata server at GCE_METADATA_HOST (ComputeEngineCredentials), gets an access token and the
 * service account; IdTokenCredentials gets an ID token for the audience given as the argument.
 * Prints them as JSON; the test checks the access token with the emulator's tokeninfo and the ID
 * token against the emulator's keys.
 */
public final class GcpCredentials {
    private GcpCredentials() {}

    public static void main(String[] args) throws IOException {
        String audience = args[0];
        GoogleCredentials credentials = GoogleCredentials.getApplicationDefault()
            .createScoped(List.of("https://www.googleapis.com/auth/cloud-platform"));
        credentials.refresh();
        IdTokenCredentials idTokens = IdTokenCredentials.newBuilder()
            .setIdTokenProvider((IdTokenProvider) credentials)
            .setTargetAudience(audience)
            .build();
        idTokens.refresh();
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("client", credentials.getClass().getSimpleName());
        out.put("access_token", credentials.getAccessToken().getTokenValue());
        out.put("email", ((ComputeEngineCredentials) credentials).getAccount());
        out.put("id_token", idTokens.getIdToken().getTokenValue());
        Json.print(out);
    }
}
