// Renders an Ollama TEMPLATE with Go's text/template (the engine Ollama uses), for the Modelfile test.
// Usage: go run main.go TEMPLATE_FILE MESSAGES_JSON_FILE; prints the rendered prompt.
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	text, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	raw, err := os.ReadFile(os.Args[2])
	if err != nil {
		panic(err)
	}
	var messages []Message
	if err := json.Unmarshal(raw, &messages); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("ollama").Parse(string(text)))
	if err := tmpl.Execute(os.Stdout, map[string]any{"Messages": messages}); err != nil {
		panic(err)
	}
}
