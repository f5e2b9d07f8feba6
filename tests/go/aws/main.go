// The AWS SDK for Go v2, unmodified: config.LoadDefaultConfig resolves credentials from the
// environment keyless dev writes (the container endpoint when AWS_CONTAINER_CREDENTIALS_FULL_URI is
// set, with the token re-read from AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE; else IMDSv2 at
// AWS_EC2_METADATA_SERVICE_ENDPOINT). Prints them as JSON for the test, which proves them with a
// SigV4-signed GetCallerIdentity against the emulator.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
)

func main() {
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		fail(err)
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		fail(err)
	}
	_ = json.NewEncoder(os.Stdout).Encode(map[string]string{
		"access_key_id":     creds.AccessKeyID,
		"secret_access_key": creds.SecretAccessKey,
		"session_token":     creds.SessionToken,
		"expiration":        creds.Expires.UTC().Format(time.RFC3339),
		"source":            creds.Source,
	})
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
