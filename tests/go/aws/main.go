// The AWS SDK for Go v2, unmodified: config.LoadDefaultConfig resolves credentials from the
// environment keyless dev writes (the container endpoint when AWS_CONTAINER_CREDENTIALS_FULL_URI is
// set, with the token re-read from AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE; else IMDSv2 at
// AWS_EC2_METADATA_SERVICE_ENDPOINT). Prints them as JSON for the test, which proves them with a
// SigV4-signed GetCallerIdentity against the emulator.
//
// `aws loop FILE`: a long-running app that asks for credentials every 100 ms, each time through a
// fresh config (so every attempt is a request to the endpoint, not the SDK's cache), and appends
// one JSON line per attempt to FILE ({"at": RFC 3339 nanoseconds, "ok": bool, "error": text}),
// then {"at": ..., "sigterm": true} when SIGTERM comes, and exits 0. The real-node tests read FILE
// after the pod is deleted: no request before the app's own SIGTERM may have failed.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "loop" {
		loop(os.Args[2])
		return
	}
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

func loop(path string) {
	file, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		fail(err)
	}
	record := func(fields map[string]any) {
		fields["at"] = time.Now().UTC().Format(time.RFC3339Nano)
		line, _ := json.Marshal(fields)
		// One write per line (O_APPEND): a line is whole or absent when the process is killed.
		_, _ = file.Write(append(line, '\n'))
	}
	terms := make(chan os.Signal, 1)
	signal.Notify(terms, syscall.SIGTERM)
	for {
		select {
		case <-terms:
			record(map[string]any{"sigterm": true})
			_ = file.Close()
			os.Exit(0)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		cfg, err := config.LoadDefaultConfig(ctx)
		if err == nil {
			_, err = cfg.Credentials.Retrieve(ctx)
		}
		cancel()
		if err != nil {
			record(map[string]any{"ok": false, "error": err.Error()})
		} else {
			record(map[string]any{"ok": true})
		}
		select {
		case <-terms:
			record(map[string]any{"sigterm": true})
			_ = file.Close()
			os.Exit(0)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
