package cluster

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// ErrStaleToken is a write made with a fencing token that is no longer
// the program's: another node took the program over.
var ErrStaleToken = errors.New("stale fencing token: the program has been taken over by another node")

// ErrNoKey is a key the program's store does not hold.
var ErrNoKey = errors.New("no such key")

// MaxValue bounds one stored value.
const MaxValue = 1 << 20

// KVGet returns the value of a program's key.
func (n *Node) KVGet(ctx context.Context, program, key string) ([]byte, error) {
	var v []byte
	err := n.query(ctx, func(ctx context.Context, db *sql.DB) error {
		return db.QueryRowContext(ctx, `SELECT value FROM kv WHERE program = ? AND key = ?`, program, key).Scan(&v)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: %s", ErrNoKey, key)
	}
	if err != nil {
		return nil, fmt.Errorf("cluster: reading %s of %s: %w", key, program, err)
	}
	return v, nil
}

// KVPut stores a program's key. A persistent program's write must carry
// its fencing token (as given to it): it is refused with ErrStaleToken
// unless the token is the program's current one and this node holds it.
// An on-demand program's write carries none (token 0) and is not fenced.
func (n *Node) KVPut(ctx context.Context, program, key string, value []byte, token int64) error {
	if len(value) > MaxValue {
		return fmt.Errorf("cluster: the value of %s is %d bytes, more than %d", key, len(value), MaxValue)
	}
	err := n.tx(ctx, func(tx *sql.Tx) error {
		if err := n.fence(tx, program, token); err != nil {
			return err
		}
		_, err := tx.Exec(`INSERT INTO kv (program, key, value) VALUES (?, ?, ?)
			ON CONFLICT (program, key) DO UPDATE SET value = excluded.value`, program, key, value)
		return err
	})
	if err != nil {
		return fmt.Errorf("cluster: writing %s of %s: %w", key, program, err)
	}
	return nil
}

// KVDelete removes a program's key, fenced like KVPut.
func (n *Node) KVDelete(ctx context.Context, program, key string, token int64) error {
	err := n.tx(ctx, func(tx *sql.Tx) error {
		if err := n.fence(tx, program, token); err != nil {
			return err
		}
		_, err := tx.Exec(`DELETE FROM kv WHERE program = ? AND key = ?`, program, key)
		return err
	})
	if err != nil {
		return fmt.Errorf("cluster: deleting %s of %s: %w", key, program, err)
	}
	return nil
}

// fence checks, inside a write, that token is the program's current token
// on this node (token 0 is not fenced).
func (n *Node) fence(tx *sql.Tx, program string, token int64) error {
	var node string
	var current int64
	err := tx.QueryRow(`SELECT node, token FROM assignments WHERE program = ?`, program).Scan(&node, &current)
	if token == 0 {
		if err == nil {
			// A persistent program (it has an assignment): its writes
			// carry its token, or a copy that lost it could still write.
			return fmt.Errorf("%w (no token given; the program is persistent, its token is %d on %q)", ErrStaleToken, current, node)
		}
		return nil
	}
	if err != nil || node != n.opt.Name || current != token {
		return fmt.Errorf("%w (token %d, the program's is %d on %q)", ErrStaleToken, token, current, node)
	}
	return nil
}
