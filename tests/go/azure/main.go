// azidentity (MSAL Go's managed-identity source), unmodified: ManagedIdentityCredential or
// DefaultAzureCredential ("managed" or "default", the first argument) gets a token for the scope
// given as the second. Prints it and its expiry as JSON; the test verifies it against the
// emulator's Entra keys.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

func main() {
	which, scope := os.Args[1], os.Args[2]
	var credential azcore.TokenCredential
	var err error
	if which == "default" {
		credential, err = azidentity.NewDefaultAzureCredential(nil)
	} else {
		credential, err = azidentity.NewManagedIdentityCredential(nil)
	}
	if err != nil {
		fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	token, err := credential.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{scope}})
	if err != nil {
		fail(err)
	}
	_ = json.NewEncoder(os.Stdout).Encode(map[string]any{
		"token":  token.Token,
		"left_s": int64(time.Until(token.ExpiresOn).Seconds()),
	})
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
