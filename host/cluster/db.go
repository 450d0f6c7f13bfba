package cluster

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// schema is the cluster's database. Tokens only ever grow: an assignment
// row stays (with an empty node) when its program stops being placed, so
// that the next owner gets a higher token.
var schema = []string{
	`CREATE TABLE IF NOT EXISTS programs (
		id       TEXT PRIMARY KEY,
		manifest TEXT NOT NULL,
		revision INTEGER NOT NULL,
		source   TEXT NOT NULL,
		updated  INTEGER NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS nodes (
		name       TEXT PRIMARY KEY,
		address    TEXT NOT NULL UNIQUE,
		slot       INTEGER NOT NULL UNIQUE,
		vcpus      INTEGER NOT NULL,
		memory_mib INTEGER NOT NULL,
		beat       INTEGER NOT NULL DEFAULT 0
	)`,
	`CREATE TABLE IF NOT EXISTS assignments (
		program TEXT PRIMARY KEY,
		node    TEXT NOT NULL,
		token   INTEGER NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS kv (
		program TEXT NOT NULL,
		key     TEXT NOT NULL,
		value   BLOB NOT NULL,
		expires INTEGER NOT NULL DEFAULT 0, -- Unix ms; 0: never
		PRIMARY KEY (program, key)
	)`,
	`CREATE TABLE IF NOT EXISTS counters (
		name  TEXT PRIMARY KEY,
		value INTEGER NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS secrets (
		name  TEXT PRIMARY KEY,
		value BLOB NOT NULL
	)`,
}

// columns are the columns added to a table after it was first made, in
// the order they were added: migrate adds those a database made by an
// older agent lacks.
var columns = []struct{ table, name, def string }{
	{"kv", "expires", "INTEGER NOT NULL DEFAULT 0"},
	{"nodes", "ipv6_prefix", "TEXT NOT NULL DEFAULT ''"},
	{"nodes", "public", "TEXT NOT NULL DEFAULT ''"},
}

// indexes are made after the columns they use.
var indexes = []string{
	`CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires != 0`,
}

// migrate creates the tables and brings those of an older agent's state
// up to date (every node runs it; it is idempotent, and in one
// transaction: a node that races it sees it done or not at all).
func (n *Node) migrate(ctx context.Context) error {
	return n.tx(ctx, func(tx *sql.Tx) error {
		for _, stmt := range schema {
			if _, err := tx.Exec(stmt); err != nil {
				return fmt.Errorf("cluster: schema: %w", err)
			}
		}
		for _, c := range columns {
			var has int
			if err := tx.QueryRow(`SELECT count(*) FROM pragma_table_info(?) WHERE name = ?`, c.table, c.name).Scan(&has); err != nil {
				return fmt.Errorf("cluster: schema: the columns of %s: %w", c.table, err)
			}
			if has == 0 {
				if _, err := tx.Exec(fmt.Sprintf(`ALTER TABLE %s ADD COLUMN %s %s`, c.table, c.name, c.def)); err != nil {
					return fmt.Errorf("cluster: schema: adding %s.%s: %w", c.table, c.name, err)
				}
			}
		}
		for _, stmt := range indexes {
			if _, err := tx.Exec(stmt); err != nil {
				return fmt.Errorf("cluster: schema: %w", err)
			}
		}
		return nil
	})
}

// tx runs f in a transaction, bounded by writeTimeout, again when the
// leader changed under it; a write that finds no leader is ErrNoQuorum.
func (n *Node) tx(ctx context.Context, f func(*sql.Tx) error) error {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	return retry(ctx, func() error { return n.tryTx(ctx, f) })
}

// retry runs op until it succeeds, fails for good, or ctx ends; an op that
// kept failing for want of a leader until ctx ended is ErrNoQuorum.
func retry(ctx context.Context, op func() error) error {
	for {
		err := op()
		if err == nil || !retryable(err) {
			return noQuorum(err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%v)", ErrNoQuorum, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (n *Node) tryTx(ctx context.Context, f func(*sql.Tx) error) error {
	tx, err := n.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// retryable reports a transaction that failed because the leader moved or
// the database was busy, which a retry may cure.
func retryable(err error) bool {
	msg := err.Error()
	for _, s := range []string{"not leader", "leadership lost", "database is locked", "busy", "no available dqlite leader",
		"checkpoint in progress", "bad connection", "connection refused", "broken pipe", "EOF"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// bump increments the named counter in tx and returns its new value.
func bump(tx *sql.Tx, name string) (int64, error) {
	if _, err := tx.Exec(`INSERT INTO counters (name, value) VALUES (?, 1)
		ON CONFLICT (name) DO UPDATE SET value = value + 1`, name); err != nil {
		return 0, err
	}
	var v int64
	err := tx.QueryRow(`SELECT value FROM counters WHERE name = ?`, name).Scan(&v)
	return v, err
}

// query runs a read, bounded by writeTimeout (a read also goes through
// the leader).
func (n *Node) query(ctx context.Context, f func(context.Context, *sql.DB) error) error {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	return retry(ctx, func() error { return f(ctx, n.db) })
}
