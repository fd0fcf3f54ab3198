# cmake -DIN=file -DOUT=source.cpp -DSYMBOL=name -P embed_text.cmake: a C++ source defining
# crossmoe::games::SYMBOL as the text of IN (a policy that ships inside the binary).
file(READ ${IN} content)
file(WRITE ${OUT} "// Generated from ${IN} by src/games/embed_text.cmake; do not edit.\n"
  "namespace crossmoe::games {\nextern const char ${SYMBOL}[];\nconst char ${SYMBOL}[] = R\"embedded(${content})embedded\";\n}\n")
