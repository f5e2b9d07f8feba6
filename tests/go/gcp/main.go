// Google's Go clients, unmodified, against the metadata server GCE_METADATA_HOST names:
// golang.org/x/oauth2/google.FindDefaultCredentials for an access token, cloud.google.com/go/compute/metadata
// for the project and the service account, and google.golang.org/api/idtoken for an ID token for
// the audience given as the argument (none for an empty argument: under keyless exec's stand-in
// external_account file, idtoken impersonates through Google's IAM itself, docs/protocols.md 10.4).
// Prints them as JSON; the test checks the access token with the emulator's tokeninfo and the ID
// token against the emulator's keys.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"cloud.google.com/go/compute/metadata"
	"golang.org/x/oauth2/google"
	"google.golang.org/api/idtoken"
)

func main() {
	ctx := context.Background()
	audience := os.Args[1]
	creds, err := google.FindDefaultCredentials(ctx, "https://www.googleapis.com/auth/cloud-platform")
	if err != nil {
		fail("FindDefaultCredentials", err)
	}
	access, err := creds.TokenSource.Token()
	if err != nil {
		fail("access token", err)
	}
	project, err := metadata.ProjectIDWithContext(ctx)
	if err != nil {
		fail("project", err)
	}
	email, err := metadata.EmailWithContext(ctx, "default")
	if err != nil {
		fail("email", err)
	}
	idToken := ""
	if audience != "" {
		ids, err := idtoken.NewTokenSource(ctx, audience)
		if err != nil {
			fail("idtoken.NewTokenSource", err)
		}
		id, err := ids.Token()
		if err != nil {
			fail("ID token", err)
		}
		idToken = id.AccessToken
	}
	_ = json.NewEncoder(os.Stdout).Encode(map[string]any{
		"on_gce":       metadata.OnGCE(),
		"adc_project":  creds.ProjectID,
		"access_token": access.AccessToken,
		"project":      project,
		"email":        email,
		"id_token":     idToken,
	})
}

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
	os.Exit(1)
}
