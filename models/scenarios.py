"""What is said and heard in the training and evaluation streams, and what the model answers.

Everything here is text and sound *kinds*; ``synth.py`` turns it into audio. Each list is split
into a ``train`` part and a ``heldout`` part: held-out templates, slot values, wake-word phrasings
and near misses never appear in a training stream, so an evaluation on them measures wording the
model has not seen (``split="heldout"``; ``"heldout2"``, written in session 35, has other request
templates and unknown requests with the same held-out values and other speech).

The three abilities (the instruction at the start of a stream selects them):

- ``assistant``: speech addressed to "Edge" gets a short response (intent + slots), or an honest
  "Sorry, I can't do that yet." for requests it cannot serve; everything else gets silence;
- ``alerts``: the sound classes named in the instruction get one response per event;
- ``transcribe``: every utterance gets its words back after it ends.

``combined`` (the default instruction) is ``assistant`` plus ``alerts`` for every class.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

NAME = "Edge"
SORRY = "Sorry, I can't do that yet."

# --------------------------------------------------------------------------- slot values
# train / heldout; held-out values are new combinations or new words, never seen in training text.
ROOMS = {
    "train": ["kitchen", "living room", "bedroom", "bathroom", "hallway", "office", "dining room",
              "basement", "porch", "nursery", "laundry room", "den", "attic", "study"],
    "heldout": ["garage", "guest room", "front room", "back yard"],
}
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve",
           "fifteen", "twenty", "thirty", "forty", "forty five", "sixty", "ninety"]
DURATIONS = {
    "train": [f"{n} {u}" for n in NUMBERS for u in ("minutes", "seconds") if n != "one"]
    + ["one minute", "one hour", "two hours", "half an hour", "an hour"],
    "heldout": ["eleven minutes", "twenty five minutes", "thirty five seconds", "three hours",
                "a minute and a half"],
}
DURATIONS["train"] = [d for d in DURATIONS["train"] if d not in DURATIONS["heldout"]]
TEMPERATURES = {
    "train": [str(n) for n in (60, 62, 64, 65, 66, 67, 68, 70, 71, 72, 74, 75, 76, 78, 80)],
    "heldout": ["63", "69", "73", "77"],
}
NUMBER_WORDS = {"60": "sixty", "62": "sixty two", "63": "sixty three", "64": "sixty four", "65": "sixty five",
                "66": "sixty six", "67": "sixty seven", "68": "sixty eight", "69": "sixty nine", "70": "seventy",
                "71": "seventy one", "72": "seventy two", "73": "seventy three", "74": "seventy four",
                "75": "seventy five", "76": "seventy six", "77": "seventy seven", "78": "seventy eight",
                "80": "eighty"}
GENRES = {
    "train": ["jazz", "rock", "classical", "country", "pop", "blues", "folk", "reggae", "piano", "dance"],
    "heldout": ["soul", "hip hop", "opera"],
}

# --------------------------------------------------------------------------- intents
# (spoken templates train, spoken templates heldout, response template)
INTENTS: dict[str, tuple[list[str], list[str], str]] = {
    "lights_on": (
        ["turn on the {room} lights", "switch on the lights in the {room}", "lights on in the {room}",
         "please turn the {room} lights on", "can you turn on the {room} light", "{room} lights on please",
         "could you switch the {room} lights on",
         "turn the {room} lights on", "put the {room} lights on", "get the lights on in the {room}",
         "light up the {room}", "I want the {room} lights on", "the {room} lights on", "switch the {room} light on"],
        ["I need the {room} lights on", "make the {room} bright"],
        "Turning on the {room} lights.",
    ),
    "lights_off": (
        ["turn off the {room} lights", "switch off the lights in the {room}", "lights off in the {room}",
         "please turn the {room} lights off", "can you turn off the {room} light", "kill the {room} lights",
         "could you switch the {room} lights off",
         "turn the {room} lights off", "put the {room} lights off", "get the lights off in the {room}",
         "shut off the {room} lights", "I want the {room} lights off", "the {room} lights off", "switch the {room} light off"],
        ["I don't need the {room} lights anymore", "make the {room} dark"],
        "Turning off the {room} lights.",
    ),
    "timer": (
        ["set a timer for {duration}", "start a {duration} timer", "timer for {duration} please",
         "can you set a timer for {duration}", "put a timer on for {duration}", "count down {duration}",
         "a {duration} timer please", "time {duration} for me", "set the timer to {duration}",
         "give me a {duration} timer", "start the timer for {duration}", "alert me in {duration}"],
        ["remind me in {duration}", "wake me up in {duration}"],
        "Setting a timer for {duration}.",
    ),
    "time": (
        ["what time is it", "what's the time", "tell me the time", "do you know what time it is",
         "what time is it right now", "can you tell me the time",
         "what's the time now", "time please", "what's the current time", "could you give me the time"],
        ["how late is it", "have you got the time"],
        "Checking the time.",
    ),
    "weather": (
        ["what's the weather like", "what's the weather today", "will it rain today", "how's the weather",
         "what's the forecast", "is it cold outside",
         "what's it like outside", "is it going to rain", "give me the forecast", "how warm is it outside",
         "what's the weather going to do"],
        ["do I need an umbrella", "is it sunny out there"],
        "Checking the weather.",
    ),
    "music": (
        ["play some {genre} music", "play {genre}", "put on some {genre}", "can you play {genre} music",
         "I want to hear some {genre}", "start playing {genre} music",
         "put some {genre} on", "play me some {genre}", "some {genre} music please", "could you put on {genre}",
         "I'm in the mood for {genre}"],
        ["give me some {genre} tunes", "let's have a little {genre}"],
        "Playing {genre} music.",
    ),
    "stop_music": (
        ["stop the music", "pause the music", "stop playing", "turn the music off", "that's enough music",
         "pause it please",
         "stop it", "music off", "no more music", "turn off the music", "switch the music off", "enough music please"],
        ["silence the speaker", "cut the music"],
        "Stopping the music.",
    ),
    "volume_up": (
        ["turn it up", "volume up", "make it louder", "turn the volume up", "louder please",
         "can you turn it up a bit",
         "a bit louder", "increase the volume", "turn the sound up", "louder", "up the volume a little"],
        ["I can't hear it, raise the volume", "crank it up"],
        "Turning the volume up.",
    ),
    "volume_down": (
        ["turn it down", "volume down", "make it quieter", "turn the volume down", "quieter please",
         "can you turn it down a bit",
         "a bit quieter", "decrease the volume", "turn the sound down", "softer please", "reduce the volume"],
        ["that's too loud, lower the volume", "bring the volume down"],
        "Turning the volume down.",
    ),
    "thermostat": (
        ["set the temperature to {temp} degrees", "set the thermostat to {temp}", "make it {temp} degrees",
         "change the heating to {temp} degrees", "can you set the heat to {temp}",
         "heat the house to {temp} degrees", "put the heating on {temp}", "thermostat to {temp} please",
         "I want it at {temp} degrees", "turn the heat to {temp} degrees"],
        ["I'd like it {temp} degrees in here", "warm the house to {temp} degrees"],
        "Setting the temperature to {temp} degrees.",
    ),
}

# Requests the assistant cannot serve: it must say so, not guess an intent.
UNKNOWN = {
    "train": ["book me a flight to Paris", "order a pizza", "call my mother", "send an email to John",
              "what's the capital of Peru", "buy more milk online", "read me the news", "translate hello into French",
              "tell me a joke", "how tall is Mount Everest", "lock the front door", "start the car",
              "water the plants", "find my phone", "open the front gate", "who won the game last night",
              "add eggs to my shopping list", "what's on my calendar tomorrow", "vacuum the floor",
              "how do you spell necessary", "feed the cat", "make me a coffee", "order a taxi",
              "what's the square root of two", "sing me a song", "close the blinds",
              "book a hotel for Friday", "order new batteries", "call the doctor", "turn on the dishwasher",
              "walk the dog", "how far away is the moon", "write a letter to my boss", "cancel my appointment",
              "mow the lawn", "take out the trash", "open the back door", "what's the score of the match",
              "iron my shirt", "who wrote Hamlet", "charge my car", "send a message to Lisa"],
    "heldout": ["reserve a table for two", "pay the electricity bill", "text my sister", "what's the stock price of apple",
                "clean the windows", "recommend a good book"],
}

# Speech not addressed to the assistant: conversation, TV/radio lines, other people's names,
# and near misses that contain "edge" without calling it.
CONVERSATION = {
    "train": [
        "did you remember to buy bread", "I think it's going to rain later", "the meeting ran long again today",
        "can you pass me the salt", "we should visit your parents this weekend", "the train was twenty minutes late",
        "I'll be home around six", "have you seen my keys anywhere", "that movie was better than I expected",
        "let's have pasta for dinner", "the kids have a game on Saturday", "my back is killing me",
        "the traffic on the bridge was terrible", "I finished the report this morning", "where did you put the scissors",
        "it's your turn to do the dishes", "the new neighbours seem nice", "I can't find the remote",
        "we're out of coffee", "the garden needs watering", "don't forget the dentist on Tuesday",
        "the printer is jammed again", "I'm going for a run", "that's the third time this week",
        "our flight leaves at nine", "the soup needs more salt", "tomorrow will be sunny and warm",
        "and in other news the city council approved the budget", "stay tuned for the weather after the break",
        "the home team scored in the final minute", "shares fell sharply in early trading",
        "this song goes out to everyone driving home tonight", "now back to our regular programme",
        "police are asking drivers to avoid the highway", "the concert starts at eight o'clock",
        "turn left at the next light", "the timer on the oven is broken", "I set my alarm for six tomorrow",
        "could you play with your sister for a bit", "the music at the party was too loud", "what time does the shop open",
        "the weather has been strange this year", "she turned off her phone during the film", "it's colder in the bedroom",
        "we need new lights for the porch", "put your shoes by the door", "the volume on this old radio is stuck",
    ],
    "heldout": [
        "I left my umbrella on the bus", "the cat knocked over the vase", "the bakery closes early on Sundays",
        "scientists have discovered a new species of frog", "traffic is moving slowly on the ring road",
        "let's paint the fence next week",
    ],
}
OTHER_NAMES = {"train": ["Sam", "Anna", "Mike", "Lisa", "Tom", "Emma", "David", "Maria", "Ben", "Kate"],
               "heldout": ["George", "Olivia"]}
NEAR_MISSES = {
    "train": ["put the glass away from the edge of the table", "he was standing right on the edge of the cliff",
              "we have an edge over the other team", "sharpen the edge of that knife", "they live on the edge of town",
              "I'm a bit on edge today", "the edge of the road is muddy", "trim the edge of the lawn",
              "that gives us the edge", "she sat on the edge of the bed", "the cutting edge of technology",
              "don't go near the edge", "hedge the bet a little", "the ledge outside the window is icy",
              # stage 9: more ways "edge" is said without calling the assistant
              "the hedge in the front garden needs cutting", "we're on the edge of a breakthrough",
              "the edges of the photo are blurry", "my knowledge of French is rusty", "that film was really edgy",
              "it's a double edged sword", "the wedge is holding the door open", "she made a pledge to run every day",
              "the leading edge of the storm reaches us tonight", "they camped at the edge of the forest",
              "I acknowledge that I was wrong", "the plate is chipped along the edge",
              "keep away from the edge of the platform", "the kids are a little on edge before exams",
              "he lost his edge after the injury", "the edge of the rug keeps curling up", "we edged past the crowd",
              "Edgar is coming round for dinner", "the town sits at the edge of the lake",
              "she's always living on the edge", "sand the edges before you paint",
              "the team edged ahead in the second half", "there's a crack near the edge of the screen"],
    "heldout": ["the coin rolled off the edge of the desk", "his voice had an edge to it",
                "we walked along the water's edge"],
}

WAKE = {  # how the name is said; {c} is the command
    "train": ["Edge, {c}", "Hey Edge, {c}", "Okay Edge, {c}", "{c}, Edge", "Edge, {c} please", "Hey Edge {c}"],
    "heldout": ["Excuse me Edge, {c}", "{c}, would you Edge"],
}

# --------------------------------------------------------------------------- sounds
SOUND_CLASSES = ["smoke_alarm", "doorbell", "knocking", "phone", "timer", "glass"]
SOUND_NAMES = {  # how an instruction names each class
    "smoke_alarm": ["the smoke alarm", "the fire alarm", "the smoke detector", "the alarm"],
    "doorbell": ["the doorbell", "the bell", "the door bell"],
    "knocking": ["someone knocks", "knocking at the door", "a knock", "someone knocking"],
    "phone": ["the phone", "the telephone", "the phone ringing"],
    "timer": ["the kitchen timer", "the oven timer", "the timer"],
    "glass": ["glass breaking", "breaking glass", "a window breaking"],
}
SOUND_RESPONSES = {
    "smoke_alarm": "The smoke alarm is going off.",
    "doorbell": "The doorbell is ringing.",
    "knocking": "Someone is knocking.",
    "phone": "The phone is ringing.",
    "timer": "The kitchen timer is beeping.",
    "glass": "I heard glass breaking.",
}
ALERT_WORDS = {  # any of these in an instruction (lower case) asks for the class: every SOUND_NAMES entry has one
    "smoke_alarm": ("alarm", "smoke", "fire"),
    "doorbell": ("bell",),
    "knocking": ("knock",),
    "phone": ("phone",),
    "timer": ("timer",),
    "glass": ("glass", "window"),
}


def alert_words() -> dict[str, list[str]]:
    """{alert reply: the words that ask for it}: a bundle manifest's ``alert_words``."""
    return {SOUND_RESPONSES[c]: list(ALERT_WORDS[c]) for c in SOUND_CLASSES}


DISTRACTOR_SOUNDS = ["music", "noise_burst", "water", "footsteps", "clapping", "hum"]

# --------------------------------------------------------------------------- instructions
INSTRUCTIONS = {
    "assistant": ["Answer when someone talks to you.", "Respond when you are addressed by name.",
                  "You are Edge. Answer requests made to you.", "Help when someone asks you."],
    "transcribe": ["Transcribe what you hear.", "Write down everything that is said.",
                   "Transcribe the speech.", "Repeat every sentence you hear."],
    "alerts": ["Tell me if {x} goes off.", "Let me know if you hear {x}.", "Watch for {x}.",
               "Alert me when you hear {x}."],
    "combined": ["Answer when someone talks to you, and tell me if {x} goes off.",
                 "Respond when addressed and let me know if you hear {x}."],
}
DEFAULT_INSTRUCTION = "Answer when someone talks to you, and tell me if any alarm, bell, knock, phone, timer or breaking glass goes off."
TRANSCRIBE_INSTRUCTION = INSTRUCTIONS["transcribe"][0]


# --------------------------------------------------------------------------- wider training wording
# The "train+" split (recipe field ``data.wording``, stage 12 on) is the training wording plus the
# lines below: more paraphrases per intent, slot values and requests it cannot serve, so that the
# model hears more ways of saying each thing. Evaluation sets keep the "train" wording, so their
# streams stay the same from stage to stage; the held-out lists are untouched (a test checks that
# none of them occurs here either).
INTENTS_MORE = {
    "lights_on": ["lights in the {room} please", "could I have the {room} lights on", "flip on the {room} lights",
                  "turn the lights on in the {room}", "the {room} needs some light", "can we get the {room} lights on"],
    "lights_off": ["lights out in the {room}", "flip off the {room} lights", "turn the lights off in the {room}",
                   "could you shut the {room} lights", "we're done with the {room} lights", "no more lights in the {room}"],
    "timer": ["set me a timer for {duration}", "I need a timer for {duration}", "let me know when {duration} is up",
              "timer {duration}", "could you time {duration}", "start counting down {duration}"],
    "time": ["what's the time please", "tell me what time it is", "what hour is it", "is it noon yet",
             "what does the clock say", "time check please"],
    "weather": ["how's it looking outside", "what's the weather doing", "any rain today", "tell me the weather",
                "is it warm out", "what's the temperature outside"],
    "music": ["let's hear some {genre}", "throw on some {genre}", "how about some {genre} music",
              "queue up some {genre}", "{genre} music please", "I'd love some {genre}"],
    "stop_music": ["stop the song", "kill the music", "that's enough of that song", "pause the song",
                   "end the music", "quiet the music please"],
    "volume_up": ["turn the music up", "more volume please", "make the music louder", "pump up the volume",
                  "I want it louder", "louder than that"],
    "volume_down": ["turn the music down", "less volume please", "make the music quieter", "not so loud",
                    "I want it quieter", "ease off the volume"],
    "thermostat": ["set the heating to {temp} degrees", "change the thermostat to {temp}", "{temp} degrees please",
                   "keep the house at {temp} degrees", "adjust the temperature to {temp}", "can I have it at {temp} degrees"],
}
WORDING_MORE = {
    "ROOMS": ["pantry", "closet", "sunroom", "playroom", "workshop", "balcony", "patio", "loft", "utility room",
              "kids room", "spare bedroom", "upstairs hall", "downstairs bathroom", "games room", "library"],
    "DURATIONS": [f"{n} {u}" for n in ("thirteen", "fourteen", "sixteen", "seventeen", "eighteen", "nineteen",
                                       "twenty two", "fifty", "seventy") for u in ("minutes", "seconds")]
                 + ["four hours", "ten hours", "two and a half minutes"],
    # every whole degree from 55 to 85 that is not held out
    "TEMPERATURES": [str(n) for n in range(55, 86) if str(n) not in TEMPERATURES["train"] + TEMPERATURES["heldout"]],
    "GENRES": ["metal", "disco", "gospel", "techno", "funk", "punk", "ambient", "salsa", "swing", "indie"],
    "UNKNOWN": ["book a train to London", "order some flowers", "call my brother", "email my teacher",
                "what's the population of China", "pay my phone bill", "tell me a story", "set up a meeting",
                "turn on the oven", "unlock the car", "open the shed", "wash the dishes", "buy a new lamp",
                "find a good restaurant", "what's two plus two", "who is the president", "share this photo",
                "check my bank balance", "make a video call", "order cat food", "fold the laundry",
                "print my boarding pass", "sweep the kitchen floor", "what year was I born",
                "play a movie on the TV", "start the washing machine", "bake a cake", "fix the sink",
                "find a plumber", "what's the meaning of life"],
    "CONVERSATION": ["can you grab the milk from the fridge", "I think the match starts at four",
                     "the bus was packed this morning", "your sister called while you were out",
                     "we should fix that squeaky door", "the heating bill was huge this month",
                     "here is the news at six o'clock", "and now the traffic and travel update",
                     "the lights in the office flicker all day", "turn down the street by the school",
                     "I set the table already", "the music teacher is off sick"],
    "NEAR_MISSES": ["the edge of the pool is slippery", "he's sitting on the edge of his seat",
                    "the knife has lost its edge", "my nerves are on edge", "the hedge needs trimming again",
                    "we reached the edge of the map", "there's a chip on the edge of the mug"],
    "OTHER_NAMES": ["Jack", "Sophie", "Peter", "Lucy", "Chris", "Nina"],
}
_TABLES = {"ROOMS": ROOMS, "DURATIONS": DURATIONS, "TEMPERATURES": TEMPERATURES, "GENRES": GENRES, "UNKNOWN": UNKNOWN,
           "CONVERSATION": CONVERSATION, "NEAR_MISSES": NEAR_MISSES, "OTHER_NAMES": OTHER_NAMES}
for _name, _more in WORDING_MORE.items():
    _TABLES[_name]["train+"] = _TABLES[_name]["train"] + _more
_TENS, _UNITS = {5: "fifty", 6: "sixty", 7: "seventy", 8: "eighty"}, ["", *NUMBERS[:9]]
NUMBER_WORDS.update({t: f"{_TENS[int(t) // 10]} {_UNITS[int(t) % 10]}".strip() for t in WORDING_MORE["TEMPERATURES"]})


# --------------------------------------------------------------------------- widest training wording
# "train++" (stage 17 on) is "train+" plus the lines below. The probe behind issue 5 found text
# variety, not voices, to be the limit: so more paraphrases per intent, and slot values that are
# compositions (rooms of two words, numbers of two words) so that an unseen value is more often
# copied than rounded to the nearest one it knows. None of it uses the held-out templates' content
# words or the held-out values' words (HELDOUT_WORDS; a test checks that).
HELDOUT_WORDS = ["raise", "lower", "crank", "bright", "dark", "sunny", "umbrella", "silence", "speaker", "cut",
                 "warm", "remind", "wake", "late", "got", "tunes", "anymore", "in here", "garage", "guest", "yard",
                 "front room", "hip hop", "soul", "opera", "eleven", "twenty five", "thirty five", "three hours",
                 "and a half", "reserve", "electricity", "text my", "stock", "clean", "recommend"]
INTENTS_WIDE = {
    "lights_on": ["switch the {room} lights on for me", "can you light the {room}", "turn on the light in the {room}",
                  "{room} light on", "lights on {room}", "power on the {room} lights", "activate the {room} lights",
                  "the {room} lights need to be on", "would you turn on the {room} lights",
                  "please put on the lights in the {room}", "illuminate the {room}", "on with the {room} lights",
                  "hit the lights in the {room}", "turn the {room} lamp on", "could you get the {room} light on"],
    "lights_off": ["switch the {room} lights off for me", "turn off the light in the {room}", "{room} light off",
                   "lights off {room}", "power off the {room} lights", "deactivate the {room} lights",
                   "would you turn off the {room} lights", "please put out the lights in the {room}",
                   "off with the {room} lights", "turn the {room} lamp off", "the {room} lights can go off",
                   "shut the lights in the {room}", "put out the {room} lights", "no lights in the {room} please"],
    "timer": ["set a {duration} timer", "could you start a timer for {duration}", "make a timer for {duration}",
              "timer of {duration} please", "start a countdown of {duration}", "count {duration} for me",
              "put on a {duration} timer", "tell me when {duration} has passed", "let me know in {duration}",
              "begin a {duration} countdown", "{duration} on the timer please", "can I get a {duration} timer",
              "time me for {duration}", "a timer for {duration} would be great"],
    "time": ["what's the time right now", "what time do you make it", "tell me the time please", "what's the hour",
             "could you check the time", "what's the time at the moment", "time now please",
             "is it five o'clock yet", "check the clock for me", "what o'clock is it", "what's the clock showing",
             "do you know the time"],
    "weather": ["what's the weather outside", "how's the weather looking", "should I take a coat",
                "is it raining outside", "is it windy today", "what's the weather this afternoon",
                "tell me the forecast", "will it snow", "how hot is it today", "is it nice outside",
                "what will the weather be like", "check the weather please", "any storms coming",
                "is it freezing out"],
    "music": ["play a bit of {genre}", "start some {genre}", "can I hear some {genre}", "put {genre} on please",
              "play {genre} for me", "some {genre} would be nice", "switch on some {genre} music",
              "turn on some {genre}", "bring on the {genre}", "{genre} please", "play the {genre} playlist",
              "find me some {genre}", "we want {genre}", "let me hear {genre} music"],
    "stop_music": ["stop the playlist", "pause the playlist", "stop that music", "stop the song please",
                   "music stop", "halt the music", "pause playback", "end the song", "no music please",
                   "mute the music", "I've heard enough music", "please stop the music", "can you stop the music",
                   "stop all music"],
    "volume_up": ["volume up please", "increase the sound", "more sound please", "make it a bit louder",
                  "turn the volume up a bit", "boost the volume", "louder still", "turn up the sound",
                  "up the volume", "could you make it louder", "volume higher", "turn it up more",
                  "I want more volume", "a little louder please"],
    "volume_down": ["volume down please", "decrease the sound", "less sound please", "make it a bit quieter",
                    "turn the volume down a bit", "reduce the sound", "quieter still", "turn down the sound",
                    "down the volume", "could you make it quieter", "volume softer", "turn it down more",
                    "keep it down please", "a little quieter please"],
    "thermostat": ["set the heat to {temp} degrees", "change the temperature to {temp}", "temperature {temp} please",
                   "put the thermostat on {temp}", "heat it to {temp} degrees", "make the house {temp} degrees",
                   "could you set {temp} degrees", "the thermostat should be {temp}", "bump the heat to {temp}",
                   "turn the thermostat to {temp} degrees", "{temp} on the thermostat", "set it to {temp} degrees",
                   "heating to {temp} please", "I want the heat on {temp}"],
}
WORDING_WIDE = {
    "ROOMS": ["garden room", "mud room", "wine cellar", "music room", "sewing room", "gym", "home office", "tv room",
              "family room", "master bedroom", "landing", "stairs", "cellar", "garden shed", "conservatory", "boot room",
              "entrance hall", "entrance", "foyer", "lounge", "shower room", "second bedroom", "baby room", "reading room",
              "art room", "craft room", "store room", "boiler room", "side room", "top floor", "sitting room",
              "breakfast room", "dressing room", "corridor", "annex", "cinema room"],
    # two-word numbers that are not held out, in both units; hours and longer phrases too
    "DURATIONS": [f"{t} {u} {x}" for t in ("twenty", "thirty", "forty", "fifty") for u in ("one", "two", "three", "four", "six", "seven", "eight", "nine")
                  for x in ("minutes", "seconds") if f"{t} {u} {x}" not in ("twenty two minutes", "twenty two seconds")]
                 + ["five hours", "six hours", "twelve hours", "an hour and ten minutes", "two minutes and ten seconds",
                    "one minute and thirty seconds", "eight hours", "ninety seconds"],
    "GENRES": ["rap", "lofi", "electronic", "latin", "bluegrass", "grunge", "house", "trance", "chill", "lounge",
               "choir", "orchestral", "acoustic", "ska", "rock and roll", "motown", "christmas", "world", "samba",
               "tango", "polka", "flamenco", "synth pop", "new wave"],
    "UNKNOWN": ["book a dentist appointment", "order a phone charger", "call the plumber", "schedule a haircut",
                "find a recipe for soup", "turn on the TV", "switch on the kettle", "what's the exchange rate",
                "where did I park the car", "lock the windows", "check the mail", "open my email",
                "what's my password", "draw the curtains", "run a bath", "set up the printer", "book a cab",
                "track my parcel", "record the football", "who invented the telephone",
                "how many days until Christmas", "spell beautiful", "what's the speed of light",
                "translate thank you into Spanish", "buy tickets for the concert", "order groceries",
                "defrost the freezer", "make a shopping list", "give the dog a treat", "water the garden",
                "open the window", "post a photo online", "read my messages", "order sushi for dinner",
                "turn on the sprinklers", "heat up my dinner", "find flights to Rome", "start the dishwasher",
                "take a picture", "call an ambulance"],
    "CONVERSATION": ["I'll pick the kids up at three", "did you lock the car", "the boiler is making that noise again",
                     "we need to book the holiday soon", "I can't believe how expensive petrol is",
                     "the dog needs a walk", "let's watch the film after dinner", "my phone battery is dead",
                     "the lights went out at the station", "put the kettle on would you", "the neighbours are away",
                     "turn the page please", "that song was on the radio all day", "it's freezing in the office",
                     "who left the door open", "the timer went off twice", "I'll set up the tent tomorrow",
                     "the volume of traffic was unbelievable", "the forecast said rain all week",
                     "and that was the latest from the studio", "coming up after the news the weather",
                     "the temperature dropped overnight", "stop by the shop on your way", "play nicely you two"],
    "NEAR_MISSES": ["the edge of the counter is sharp", "she walked to the edge of the pier", "he edged closer to the door",
                    "the hedgehog is in the garden again", "there's a dent on the edge of the car door",
                    "we're right on the edge of the city", "keep the baby away from the edge",
                    "the knife edge was dull", "the edges are a bit rough", "Reggie is coming over later"],
    "OTHER_NAMES": ["Paul", "Julia", "Mark", "Sarah", "James", "Helen"],
}
for _name, _more in WORDING_WIDE.items():
    _TABLES[_name]["train++"] = _TABLES[_name]["train+"] + _more
TEMPERATURES["train++"] = TEMPERATURES["train+"]

# --------------------------------------------------------------------------- the teacher's wording
# "train3" is "train++" plus request templates written by a larger pretrained LM
# (``teacher_wording.py``: Qwen2.5-Coder-1.5B-Instruct, from PyPI packages), filtered so that no
# held-out word, value or template gets in. Only the responder's LM is taught on it
# (``edge-train-responder --wording train3``); slot values and everything else are train++'s.
TEACHER_PATH = Path(__file__).resolve().parent / "data" / "teacher_wording.json"
_teacher = json.loads(TEACHER_PATH.read_text()) if TEACHER_PATH.is_file() else {"intents": {}, "unknown": []}
INTENTS_TEACHER = {intent: _teacher["intents"].get(intent, []) for intent in INTENTS}
# Its requests it cannot serve are kept in the file but not used: with them the LM answered held-out
# questions ("do I need an umbrella") with the Sorry (session 27, docs/model-card.md).
TEACHER_UNKNOWN = _teacher["unknown"]
for _name, _table in _TABLES.items():
    _table["train3"] = _table["train++"]

# --------------------------------------------------------------------------- the second held-out wording
# "heldout2" (evaluation set ``assistant-wording2``) was written in session 35, before any training
# wording aimed at what the first held-out wording's failures showed (the LM reads a complaint by its
# keyword: "it's too quiet" -> quieter). Three request templates per intent and six requests the
# assistant cannot serve, none of them in any training wording; said with the held-out slot values,
# wake phrasings, conversation, names and near misses. FRESH_WORDS are its templates' own words:
# no training wording uses them (a test checks that), so the requests said as statements that
# ``train4`` adds cannot have been written towards them.
INTENTS_FRESH = {
    "lights_on": ["it's way too murky in the {room}", "flick the {room} lights on", "the {room} is like a cave"],
    "lights_off": ["douse the {room} lights", "the {room} lights are still on", "the {room} can go dark now"],
    "timer": ["give me a shout in {duration}", "ping me after {duration}", "the noodles need {duration}"],
    "time": ["I wonder what the time is", "I've lost track of the time", "what time are we at"],
    "weather": ["should I wear a jacket today", "what are the skies doing", "will it stay dry this afternoon"],
    "music": ["I'm craving some {genre}", "stick on some {genre}", "spin a few {genre} songs"],
    "stop_music": ["turn that racket off", "I'd like some peace, no more songs", "give the music a rest"],
    "volume_up": ["push the volume higher", "I can barely make out the words", "it's hardly audible"],
    "volume_down": ["that's deafening", "tone it down", "dial the volume back"],
    "thermostat": ["bring the house up to {temp} degrees", "nudge the heating to {temp} degrees",
                   "I'm chilly, put it on {temp}"],
}
UNKNOWN["heldout2"] = ["cancel my magazine subscription", "how many legs does a spider have", "empty the dishwasher",
                       "find a babysitter for Saturday", "what's the quickest way to the airport",
                       "pick up my dry cleaning"]
FRESH_WORDS = ["murky", "flick", "cave", "douse", "still on", "go dark", "shout", "ping", "noodles", "wonder",
               "lost track", "we at", "jacket", "skies", "dry", "craving", "stick", "spin", "racket", "peace", "rest",
               "push", "barely", "make out", "hardly", "audible", "deafening", "tone", "dial", "bring the house",
               "chilly", "nudge", "magazine", "subscription", "spider", "empty", "babysitter", "quickest", "airport"]
for _name, _table in _TABLES.items():
    if _name != "UNKNOWN":
        _table["heldout2"] = _table["heldout"]
HELDOUT = ("heldout", "heldout2")

# --------------------------------------------------------------------------- requests said as statements
# "train4" (``edge-train-responder --wording train4``; only the responder's LM is taught on it) is
# "train++" plus requests said as a need or a complaint rather than a command: every training
# wording had commands only ("make it quieter"), so the LM read a complaint by its keyword ("it's
# too quiet" -> quieter -> down; session 34). Written in session 35 after the second held-out
# wording was committed; they use none of its words (FRESH_WORDS) nor the first one's
# (HELDOUT_WORDS), a test checks both.
INTENTS_SAID = {
    "lights_on": ["it's gloomy in the {room}", "I can't see a thing in the {room}", "the {room} is pitch black",
                  "it's getting gloomy in the {room}, lights please"],
    "lights_off": ["the {room} lights are wasting power", "the {room} lights are glaring",
                   "nobody is using the {room}, switch the lights off", "I'm finished in the {room}, lights off please"],
    "timer": ["the cake is in for {duration}, time it", "my tea steeps for {duration}, set a timer",
              "I'm boiling eggs, start a {duration} timer"],
    "time": ["I don't know what time it is", "my watch stopped, what time is it", "I have no clue what time it is"],
    "weather": ["I'm going out, what's the weather like", "I'm heading out, will it rain",
                "I'm planning a walk, how's the weather"],
    "music": ["I'm bored, play some {genre}", "a bit of {genre} would cheer me up", "this place needs some {genre}"],
    "stop_music": ["this music is driving me mad", "the music is giving me a headache, stop it",
                   "I'm trying to sleep, stop the music", "I've had enough of this song"],
    "volume_up": ["it's too quiet", "the sound is too low", "the volume is too low", "it's not loud enough",
                  "I can't follow it, it's too soft", "it's so quiet I can't follow it"],
    "volume_down": ["it's blasting", "the noise is unbearable", "the volume is too high", "it's so noisy I can't think",
                    "the sound is too strong", "the neighbours will complain about the noise"],
    "thermostat": ["I'm freezing, set it to {temp}", "it's too cold, heat it to {temp} degrees",
                   "it's too hot, set the heat to {temp} degrees", "I'm cold, make it {temp} degrees"],
}
# "train5" is both: train++ with the teacher's lines and the requests said as statements.
for _name, _table in _TABLES.items():
    _table["train4"] = _table["train5"] = _table["train++"]
WORDINGS = ("train", "train+", "train++", "train3", "train4", "train5", "heldout", "heldout2")
# the request templates each training wording adds to INTENTS' own, in order
MORE_TEMPLATES = {"train+": (INTENTS_MORE,), "train++": (INTENTS_MORE, INTENTS_WIDE),
                   "train3": (INTENTS_MORE, INTENTS_WIDE, INTENTS_TEACHER), "train4": (INTENTS_MORE, INTENTS_WIDE, INTENTS_SAID),
                   "train5": (INTENTS_MORE, INTENTS_WIDE, INTENTS_TEACHER, INTENTS_SAID)}


def templates(intent: str, split: str) -> list[str]:
    """The spoken request templates of ``intent`` in a wording (split)."""
    if split in HELDOUT:
        return INTENTS[intent][1] if split == "heldout" else INTENTS_FRESH[intent]
    return INTENTS[intent][0] + [t for more in MORE_TEMPLATES.get(split, ()) for t in more[intent]]


def reply_forms() -> list[str]:
    """Every reply template an assistant request gets ("Turning on the {room} lights."), and the Sorry."""
    return sorted({reply for _, _, reply in INTENTS.values()} | {SORRY})


def join_names(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " or " + names[-1]


@dataclasses.dataclass
class Utterance:
    """A line of speech. ``response`` is what the assistant says to it under ``assistant``
    (None: stay silent); ``intent`` names the command or 'unknown' / 'other'."""

    text: str
    addressed: bool
    intent: str
    response: str | None


def _fill(template: str, slots: dict[str, str]) -> str:
    return template.format(**slots)


def request(rng: random.Random, split: str, intent: str | None = None) -> tuple[str, str, str]:
    """A request without the wake word -> (spoken words, intent, the assistant's reply)."""
    intent = intent or rng.choice([*INTENTS, "unknown"])
    if intent == "unknown":
        return rng.choice(UNKNOWN[split]), "unknown", SORRY
    reply = INTENTS[intent][2]
    room, dur = rng.choice(ROOMS[split]), rng.choice(DURATIONS[split])
    temp, genre = rng.choice(TEMPERATURES[split]), rng.choice(GENRES[split])
    spoken = {"room": room, "duration": dur, "temp": NUMBER_WORDS[temp], "genre": genre}
    said = {"room": room, "duration": dur, "temp": temp, "genre": genre}
    return _fill(rng.choice(templates(intent, split)), spoken), intent, _fill(reply, said)


def command(rng: random.Random, split: str, intent: str | None = None) -> Utterance:
    """An addressed request: a known intent (with slots) or, for intent 'unknown', one it cannot serve.
    Held-out commands use held-out templates and slot values; the wake phrase may be either."""
    body, intent, reply = request(rng, split, intent)
    wake = rng.choice(WAKE["heldout"] + WAKE["train"] if split in HELDOUT else WAKE["train"])
    return Utterance(_fill(wake, {"c": body}), True, intent, reply)


def not_addressed(rng: random.Random, split: str) -> Utterance:
    """Speech the assistant must ignore: conversation, radio, a request to someone else, a near miss."""
    r = rng.random()
    if r < 0.45:
        return Utterance(rng.choice(CONVERSATION[split]), False, "other", None)
    if r < 0.75:  # the same requests, said to a person: "Sam, turn on the kitchen lights"
        body, _, _ = request(rng, split, rng.choice(list(INTENTS)))
        name = rng.choice(OTHER_NAMES[split])
        return Utterance(f"{name}, {body}" if rng.random() < 0.7 else f"{body}, {name}", False, "other", None)
    return Utterance(rng.choice(NEAR_MISSES[split]), False, "near_miss", None)


def instruction(rng: random.Random, mode: str, watch: list[str] | None = None) -> str:
    if mode in ("assistant", "transcribe"):
        return rng.choice(INSTRUCTIONS[mode])
    names = [rng.choice(SOUND_NAMES[c]) for c in watch or []]
    return rng.choice(INSTRUCTIONS[mode]).format(x=join_names(names))


def all_texts(split: str = "train") -> list[str]:
    """Every string the training streams can contain (for the BPE): spoken lines, responses, instructions."""
    rng = random.Random(0)
    out = [DEFAULT_INSTRUCTION, SORRY, *SOUND_RESPONSES.values()]
    for m, ts in INSTRUCTIONS.items():
        out += ts
    for c, names in SOUND_NAMES.items():
        out += names
    for _ in range(4000):
        out.append(command(rng, split).text)
        out.append(command(rng, split).response or "")
        out.append(not_addressed(rng, split).text)
    return out
