package store

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// Ref names an object by the SHA-256 digest of its bytes: 64 lower-case
// hexadecimal digits. ParseRef also accepts upper-case digits and a
// "sha256:" prefix (the OCI form) and normalises both away; the
// reference runtime's PROGRAM messages write item hashes as bare 64-digit
// hex, which is accepted as it is.
type Ref string

// refPrefix is the optional algorithm prefix of a ref.
const refPrefix = "sha256:"

// ParseRef checks and normalises a ref.
func ParseRef(s string) (Ref, error) {
	h := strings.ToLower(strings.TrimPrefix(strings.TrimPrefix(s, refPrefix), "SHA256:"))
	if len(h) != 64 {
		return "", fmt.Errorf("ref %q is not a sha256 digest: want 64 hex digits, optionally prefixed sha256:, got %d characters", s, len(h))
	}
	if _, err := hex.DecodeString(h); err != nil {
		return "", fmt.Errorf("ref %q is not a sha256 digest: not hexadecimal", s)
	}
	return Ref(h), nil
}

// Short is the ref's first 12 digits, for logs.
func (r Ref) Short() string {
	if len(r) > 12 {
		return string(r[:12])
	}
	return string(r)
}
