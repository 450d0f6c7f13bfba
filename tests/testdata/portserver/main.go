// Command portserver is a minimal static HTTP server for tests that need a
// program without any runtime (an executable inside a bare root image). It
// answers every request on $PORT with "ok from portserver".
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok from portserver")
	})
	log.Fatal(http.ListenAndServe(":"+port, nil))
}
