"""Writes train.jsonl and validation.jsonl: a small home-assistant tool-calling data set written for trainer.

Five functions (weather, currency, timer, recipes, calendar). Training conversations are complete: the user
asks, the assistant calls a function (or two, one after the other), the tool answers, the assistant replies;
some have a follow-up turn, and some need no call at all. Validation cases end where the model must act:
after the user's question (a call, or a direct answer when no function fits) or after a first tool result
(the second call of a two-step request). Run: python data/tools/make_data.py (seeded; rewrites both files).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = "You are a home assistant. Call a function when one fits the request; otherwise answer briefly."
TOOLS = [  # short descriptions: the five definitions are in every example's prompt
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "convert_currency", "description": "Convert money.",
                                      "parameters": {"type": "object", "properties": {"amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}}, "required": ["amount", "from", "to"]}}},
    {"type": "function", "function": {"name": "set_timer", "description": "Start a timer.",
                                      "parameters": {"type": "object", "properties": {"minutes": {"type": "integer"}, "label": {"type": "string"}}, "required": ["minutes"]}}},
    {"type": "function", "function": {"name": "search_recipes", "description": "Find recipes.",
                                      "parameters": {"type": "object", "properties": {"ingredient": {"type": "string"}, "max_minutes": {"type": "integer"}}, "required": ["ingredient"]}}},
    {"type": "function", "function": {"name": "add_event", "description": "Add a calendar event.",
                                      "parameters": {"type": "object", "properties": {"title": {"type": "string"}, "date": {"type": "string"}, "time": {"type": "string"}}, "required": ["title", "date"]}}},
]
CITIES = ["Paris", "Tokyo", "Lagos", "Lima", "Oslo", "Cairo", "Denver", "Mumbai", "Seoul", "Madrid", "Nairobi", "Quito", "Hanoi", "Dublin", "Perth"]
CURRENCIES = ["USD", "EUR", "JPY", "GBP", "INR", "CAD", "CHF", "BRL"]
INGREDIENTS = ["chickpeas", "spinach", "salmon", "mushrooms", "lentils", "eggs", "tofu", "pumpkin", "rice", "chicken"]
EVENTS = ["Dentist", "Team lunch", "Piano lesson", "Call with Sam", "Gym", "Book club", "Parent meeting", "Car service"]
SKIES = ["sunny", "cloudy", "light rain", "windy", "clear", "foggy"]
DISHES = {"chickpeas": ["chana masala", "hummus"], "spinach": ["spinach dal", "saag paneer"], "salmon": ["baked salmon", "salmon rice bowl"],
          "mushrooms": ["mushroom risotto", "mushroom soup"], "lentils": ["lentil soup", "dal tadka"], "eggs": ["shakshuka", "omelette"],
          "tofu": ["mapo tofu", "tofu stir-fry"], "pumpkin": ["pumpkin soup", "roast pumpkin"], "rice": ["fried rice", "rice pudding"],
          "chicken": ["chicken curry", "lemon chicken"]}
CHAT = [("Hi!", "Hello! How can I help?"), ("Thanks, that's all.", "You're welcome!"), ("What can you do?", "I can check the weather, convert money, set timers, find recipes and add calendar events."),
        ("Tell me a joke.", "Why did the timer quit? It had no time left."), ("Good morning!", "Good morning! What can I do for you?"),
        ("What is 12 times 12?", "144."), ("How many days are in a week?", "Seven.")]


def call(name: str, arguments: dict, k: int) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": [{"id": f"call{k:05d}", "type": "function",
                                                                 "function": {"name": name, "arguments": json.dumps(arguments)}}]}


def result(k: int, value: dict) -> dict:
    return {"role": "tool", "tool_call_id": f"call{k:05d}", "content": json.dumps(value)}


def weather(rng):
    city = rng.choice(CITIES)
    unit = rng.choice(["celsius", "fahrenheit"])
    temp = rng.randint(-5, 35) if unit == "celsius" else rng.randint(25, 95)
    sky = rng.choice(SKIES)
    ask = rng.choice([f"What's the weather in {city}?", f"How warm is it in {city} right now?", f"Is it raining in {city}?"])
    if unit == "fahrenheit":
        ask = ask.rstrip("?") + " in Fahrenheit?"
        args = {"city": city, "unit": "fahrenheit"}
    else:
        args = {"city": city}
    mark = "F" if unit == "fahrenheit" else "C"
    return ask, ("get_weather", args), {"temp": temp, "unit": unit, "sky": sky}, f"It is {temp} °{mark} and {sky} in {city}."


def currency(rng):
    amount = rng.choice([5, 20, 50, 75, 100, 250, 1000])
    a, b = rng.sample(CURRENCIES, 2)
    rate = round(rng.uniform(0.01, 150), 3)
    value = round(amount * rate, 2)
    ask = rng.choice([f"Convert {amount} {a} to {b}.", f"How much is {amount} {a} in {b}?", f"What are {amount} {a} worth in {b}?"])
    return ask, ("convert_currency", {"amount": amount, "from": a, "to": b}), {"result": value, "currency": b}, f"{amount} {a} is {value} {b}."


def timer(rng):
    minutes = rng.choice([3, 5, 8, 10, 12, 15, 20, 25, 30, 45])
    label = rng.choice(["", "pasta", "tea", "laundry", "bread", "eggs"])
    if label:
        ask = rng.choice([f"Set a {minutes} minute timer for the {label}.", f"Timer for {label}, {minutes} minutes please."])
        args = {"minutes": minutes, "label": label}
    else:
        ask = rng.choice([f"Set a timer for {minutes} minutes.", f"Start a {minutes}-minute timer."])
        args = {"minutes": minutes}
    return ask, ("set_timer", args), {"status": "started", "minutes": minutes}, f"Timer set for {minutes} minutes" + (f" ({label})." if label else ".")


def recipes(rng):
    ingredient = rng.choice(INGREDIENTS)
    quick = rng.random() < 0.4
    ask = f"Find me a recipe with {ingredient}" + (" that takes under 30 minutes." if quick else ".")
    args = {"ingredient": ingredient, "max_minutes": 30} if quick else {"ingredient": ingredient}
    found = DISHES[ingredient]
    return ask, ("search_recipes", args), {"recipes": found}, f"Try {found[0]} or {found[1]}."


def event(rng):
    title = rng.choice(EVENTS)
    date = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    time = f"{rng.randint(8, 19):02d}:{rng.choice(['00', '15', '30', '45'])}"
    ask = rng.choice([f"Add '{title}' on {date} at {time}.", f"Put {title} in my calendar for {date} at {time}."])
    return ask, ("add_event", {"title": title, "date": date, "time": time}), {"status": "added"}, f"Added {title} on {date} at {time}."


KINDS = [weather, currency, timer, recipes, event]  # in the order of TOOLS


def offered(rng, *needed) -> list[dict]:
    """The example's tools: the functions it needs and others up to three, in a random order (as an app offers a few)."""
    names = {k.__name__ for k in needed}
    others = [k for k in KINDS if k.__name__ not in names]
    chosen = list(needed) + rng.sample(others, 3 - len(needed))
    rng.shuffle(chosen)
    return [TOOLS[KINDS.index(k)] for k in chosen]


def conversation(rng, shape: str) -> dict:
    messages = [{"role": "system", "content": SYSTEM}]
    k = 0
    if shape == "chat":
        ask, answer = rng.choice(CHAT)
        return {"tools": offered(rng), "messages": messages + [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]}
    first, second = rng.sample(KINDS, 2)
    tools = offered(rng, first, second) if shape in ("two_step", "follow_up") else offered(rng, first)
    ask, (name, args), value, reply = first(rng)
    if shape == "two_step":
        ask2, (name2, args2), value2, reply2 = second(rng)
        messages.append({"role": "user", "content": f"{ask.rstrip('.?')}, and {ask2[0].lower() + ask2[1:]}"})
        messages += [call(name, args, 1), result(1, value), call(name2, args2, 2), result(2, value2),
                     {"role": "assistant", "content": f"{reply} {reply2}"}]
        return {"tools": tools, "messages": messages}
    k += 1
    messages += [{"role": "user", "content": ask}, call(name, args, k), result(k, value), {"role": "assistant", "content": reply}]
    if shape == "follow_up":
        ask2, (name2, args2), value2, reply2 = second(rng)
        k += 1
        messages += [{"role": "user", "content": ask2}, call(name2, args2, k), result(k, value2), {"role": "assistant", "content": reply2}]
    return {"tools": tools, "messages": messages}


def eval_case(rng, shape: str) -> dict:
    """A case that ends where the model must act: its last message is the reference."""
    full = conversation(rng, shape)
    messages = full["messages"]
    if shape == "two_step":  # stop after the second call: the model must make it, given the first result
        return {"tools": full["tools"], "messages": messages[:5]}
    return {"tools": full["tools"], "messages": messages[:3]}  # system, user, and the call (or the direct answer)


def main() -> None:
    here = Path(__file__).parent
    rng = random.Random(15)
    shapes = ["single"] * 50 + ["follow_up"] * 25 + ["two_step"] * 25 + ["chat"] * 20
    rng.shuffle(shapes)
    train = [conversation(rng, s) for s in shapes]
    cases = ["single"] * 24 + ["two_step"] * 8 + ["chat"] * 8
    rng.shuffle(cases)
    validation = [eval_case(rng, s) for s in cases]
    for name, rows in (("train.jsonl", train), ("validation.jsonl", validation)):
        (here / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (here / "tools.json").write_text(json.dumps(TOOLS, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
