package cluster

import (
	"context"
	"crypto/rand"
	"database/sql"
	"fmt"
)

// forwardKeyName names the key of forwarded agent requests in the
// secrets table.
const forwardKeyName = "forward"

// ForwardKeySize is the size of the cluster's forwarding key in bytes.
const ForwardKeySize = 32

// ForwardKey returns the cluster's key for the requests one node makes to
// another on behalf of the agent (a trigger's event forwarded to the node
// that runs a persistent program): random, made by the first node that
// asks, the same on every node. It stays in the cluster's database, which
// only the nodes read.
func (n *Node) ForwardKey(ctx context.Context) ([]byte, error) {
	var key []byte
	err := n.tx(ctx, func(tx *sql.Tx) error {
		// Two nodes that ask at once each offer a key; the first
		// written is everyone's.
		offer := make([]byte, ForwardKeySize)
		rand.Read(offer) // never fails (crypto/rand)
		if _, err := tx.Exec(`INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING`, forwardKeyName, offer); err != nil {
			return err
		}
		return tx.QueryRow(`SELECT value FROM secrets WHERE name = ?`, forwardKeyName).Scan(&key)
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: the forwarding key: %w", err)
	}
	if len(key) != ForwardKeySize {
		return nil, fmt.Errorf("cluster: the forwarding key has %d bytes, want %d", len(key), ForwardKeySize)
	}
	return key, nil
}
